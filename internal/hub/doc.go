// Package hub fans live updates out to dashboard clients over WebSocket and
// Server-Sent Events: GET /api/v1/stream?machine=ID[&machine=ID…] or ?all=1.
//
// Its publish side is one typed method per kind of update:
// [Hub.PublishSamples], [Hub.PublishWindows], [Hub.PublishMedians],
// [Hub.PublishStatus], [Hub.PublishAlarm] and [Hub.PublishNote]. Alone it
// fans out to its own clients; with Options.Redis it fans out across every
// replica sharing that Redis (see Replicas), and hands the app what other
// replicas published, decoded (Options.OnRemoteSamples, OnRemoteAlarm).
//
// # Transports
//
// A request with a WebSocket upgrade gets a WebSocket: one JSON message per
// text frame. With ?batch=1 (opt-in, WebSocket only; ignored on SSE) each
// text frame instead carries a JSON array of one or more messages, in
// order, hello and reconnect included: everything written to the client
// at once goes in one frame, which saves a client receiving many messages
// a second most of its per-frame work. The hub speaks the server side of
// RFC 6455 itself: no extension (no compression) and no subprotocol is
// negotiated; it answers pings and close frames and ignores data messages
// (a client has nothing to say). It fails the connection (RFC 6455 §7.4.1)
// with 1002 on a frame that breaks the protocol (unmasked, a continuation
// without a message to continue), 1007 on a text message that is not
// UTF-8, and 1009 on a message over 16 KiB. A request with
// "Accept: text/event-stream" gets SSE: one JSON
// message per event, in the event's data field; events that may serve as a
// resume cursor also carry "id: <seq>". The stream opens with a "retry:"
// hint (1–5 s, jittered per connection so that a restart does not bring every
// client back in the same instant). Any other request is answered 426.
//
// # Messages
//
// Every message is a JSON object with a "type". seq is a hub-wide sequence
// number, strictly increasing, one per published message; seqs are below
// 2^53, so they are exact in JavaScript. The hub starts its sequence at the
// current time in Unix microseconds, so the seqs of a restarted process are
// always newer than any seq of the one before it, and a cursor from before a
// restart is recognised as expired rather than silently mistaken for a
// position in the new sequence.
//
//	{"seq":42,"type":"samples","machine":"press-07","ingestTs":1764482400123,
//	 "samples":[{"metric":"temp","ts":1764482400000,"value":71.3}, …]}
//
// Samples are batched: one message per machine per publish, the samples in
// the order they were published. A seq names a message, not its samples: a
// publisher may publish a sample again (on the Kafka path a processor that
// takes a partition over shows its uncommitted samples again, ADR 0017), in
// a new message; a client drops what it has by (machine, metric, ts). ts is the event time of a sample and
// ingestTs the server's ingest time, both in Unix milliseconds; a client
// measures sensor-to-screen latency as its arrival time − ts (and the
// server's share of it as arrival time − ingestTs). A value that is not a
// finite number is sent as null.
//
//	{"seq":43,"type":"alarm","machine":"press-07","data":{…}}
//
// Alarms ([Hub.PublishAlarm]), notes ([Hub.PublishNote]) and twin
// document changes ([Hub.PublishTwin]) carry the alarm, note or twin as
// data; status ([Hub.PublishStatus]), windows
// ([Hub.PublishWindows], one message per machine: "windows":[{…},…]) and
// median ([Hub.PublishMedians]) are encoded by hand. Every message type is
// a [MessageType] constant with a Go struct (wire.go) that describes its
// JSON field for field; the AsyncAPI document served at /api/asyncapi.json
// gives their schemas. A status message's data is
// {"status":"online"|"offline","alarm":bool,"lastSeen":T}: liveness and
// alarm apart, so a machine may be offline and in alarm.
//
//	{"type":"hello","seq":41,"heartbeatMs":15000,"queue":65536,"queueBytes":8388608,"maxLagMs":30000}
//
// hello is the first message on every connection. Its seq is the hub's
// latest seq at the moment the client was registered: replayed messages
// (see Resume) have seqs up to it, live ones above it. No SSE id.
//
//	{"type":"heartbeat","ts":1764482415000,"seq":57}
//
// heartbeat is sent every heartbeat interval whether the stream is idle or
// not; ts is the server time in Unix ms and seq the hub's latest seq. Every
// message up to seq that matches the client's filter has been sent before
// the heartbeat, so seq is a valid resume cursor even for a client whose
// machines are quiet; on SSE the heartbeat is a normal event with "id: seq"
// so that the browser's Last-Event-ID moves forward with it. A client
// that has fallen past a bound of its queue (see Slow clients) is cut off
// at a heartbeat instead.
//
//	{"type":"reset","reason":"cursor_expired","seq":41}
//
// reset follows hello when a client asks to resume from a cursor the hub
// can no longer serve: "cursor_expired" when messages after the cursor have
// left the replay ring (or the cursor is from before a restart),
// "cursor_unknown" when the cursor is ahead of the hub's latest seq. The
// client must reload what it shows from the query API; the stream goes on
// live after seq (which is also the reset's SSE id). Nothing is replayed.
//
//	{"type":"reconnect","reason":"slow_client","cursor":40,"retryMs":2345}
//
// reconnect is the last message before the hub closes a stream: reason is
// "slow_client" (see below) or "shutdown" (the server is stopping; WebSocket
// close status 1012 service restart). cursor is the seq to resume from: every
// message up to it that matches the filter has been sent on this
// connection. retryMs is a jittered delay to wait before reconnecting. No
// SSE id.
//
// # Resume
//
// A client resumes with ?cursor=N (WebSocket or SSE) or, on SSE, the
// Last-Event-ID header, which wins over ?cursor because a browser's
// EventSource reconnects with its original URL and an updated header. On
// connect the hub replays, from a ring of the most recent messages, every
// message with seq > N that matches the filter, then goes on live: no gap
// and no duplicate, because the client is registered for live messages and
// the ring is read in the same critical section. A client without a cursor
// gets live messages only.
//
// # Slow clients
//
// Each client has its own queue, bounded by what the client is really
// behind by: Options.MaxQueueBytes (bytes queued; a publish into an empty
// queue is always taken, whatever its size) and Options.MaxLag (the age of
// its oldest queued message, checked at each publish for it and at each
// heartbeat); Options.QueueSize is a safety cap of messages far above use.
// The publisher never blocks on a client and never writes to a network
// connection: it only enqueues shared, already encoded messages. A client
// past a bound is cut off: it is removed from the hub at once (other
// clients keep receiving), the messages still in its queue are discarded,
// a write in flight to it is interrupted (its deadline moved to now), and
// its writer sends, within noticeTimeout (2s), the rest of the interrupted
// frame, then {"type":"reconnect","reason":"slow_client","cursor":N} where
// N is the seq to resume from, then closes the connection (WebSocket close
// status 1013 try again later; SSE: the response ends). A write that does
// not complete within Options.WriteTimeout is announced the same way, with
// reason "write_error". A client that reconnects with the cursor gets the
// discarded messages from the replay ring, or a reset if they have left it.
//
// # Conflated fleet streams
//
// all=1&conflate=D (50ms to 10s) gets, at most once per D, one message
//
//	{"type":"fleet","seq":N,"machines":[{"machine":"m1","status":"online","alarm":false,
//	 "lastSeen":…,"metrics":{"temp":{"value":71.2,"ts":…}}},…]}
//
// with the machines changed since the last, and their metrics that changed
// (fleetState.merge). Alarm and note messages pass through at once; samples, status, windows and medians do not. No resume:
// a conflated stream opened with a cursor gets a reset (reason
// "conflated"). A filter (WithFilter) applies.
//
// # Encoding
//
// Messages are encoded by hand, once, and only if a client wants them: a
// message for a machine nobody subscribed to is kept unencoded in the
// replay ring (lazyBody) and encoded if a resuming client wants it. With no
// client connected, none that left within resumeHorizon and no Redis, a
// publish makes no message at all and expires older cursors; [Hub.Skip]
// tells a caller so beforehand, so that it need not even build what it
// would publish.
//
// # Filters and limits
//
// A client names up to Options.MaxMachines machines, or all=1 for every
// machine; neither, both, or too many is answered 400 problem+json naming
// the parameter; so is a batch other than 1, true, 0 or false. Past
// Options.MaxClients connected clients, and during
// shutdown, the answer is 503 problem+json with Retry-After. Delivery looks
// up the subscribers of the message's machine and the all-machines
// subscribers; it never scans every client. Events published with an empty
// machine go to the all-machines subscribers only.
//
// # Replicas
//
// With Options.Redis, each publish call goes through Redis once: one Lua
// script call takes its seqs from a global counter and publishes its
// messages on one Pub/Sub channel (sharded Pub/Sub, SPUBLISH, with
// Options.RedisSharded). Every replica, the publisher included, delivers
// what arrives on the channel to its own clients, so seqs and cursors mean
// the same on every replica and a client may resume on any of them; a
// replica delivers each message once (its own only when it comes back from
// Redis). A cursor the replica has not reached yet (the client comes from a
// replica a little ahead) is held up to Options.ResumeWait before hello.
// The seqs of the global sequence increase but may jump (a replica that
// joins lifts the counter to its own latest seq); a jump holds no message.
//
// If the subscription fails, or a publish does, the hub delivers its own
// messages to its own clients at once, with its own seqs, and [Hub.Ready]
// reports [ErrFanoutDown]; Run resubscribes by itself. When it is back,
// every client of the replica gets
//
//	{"type":"reset","reason":"fanout_gap","seq":N}
//
// (an SSE event with id N): messages of other replicas may have been lost
// meanwhile, so the client reloads what it shows from the query API; the
// cursors from before N are expired. The same happens if the replica sees
// that it missed messages of the global sequence.
//
// # Operation
//
// Run sends the heartbeats. Call Shutdown before, or together with,
// http.Server.Shutdown: WebSocket connections, and SSE responses over
// HTTP/1.1, are hijacked, out of the server's reach (an SSE response that
// cannot be hijacked, over HTTP/2, goes through the ResponseWriter and
// never goes idle). The server needs no WriteTimeout for the stream: the
// hub gives each burst of writes to a client its own deadline
// (Options.WriteTimeout).
//
// Each write to a client carries everything its queue holds (up to 128
// messages) in one system call: several WebSocket frames, or one HTTP chunk
// of SSE events. With Options.WriteInterval, a client is written to at most
// once per interval, so that a client receiving many messages a second
// gets them in fewer, larger writes, at the cost of up to that interval of
// latency; a client that has been quiet for the interval is written to at
// once.
//
// A connected, idle client costs a few KB of memory (BenchmarkClientMemory:
// about 5 KB, stacks included; `twinline bench --scenario fanout`: about
// 8 KB of server RSS): after the handshake the hub drops net/http's
// buffers, its goroutine and the request; the connection keeps one
// goroutine, with a small stack, that reads what the client sends (pings,
// close frames; for SSE, the end of the connection). A writer goroutine is
// started only when there is something to write (messages queued, a cut-off,
// the peer gone) and ends when the client's queue is empty. The queue grows
// on demand and the scratch space of a write is pooled. The replay ring
// holds ReplaySize messages and at most ReplayBytes.
//
// # Identities
//
// The HTTP layer in front of the hub may attach two things to a stream
// request's context: [WithFilter], which narrows an all=1 stream (live and
// replayed) to the machines an identity may see, and [WithClientKey], which
// counts the stream against Options.MaxPerClient (past it: 429, reason
// max_per_client). A client without a filter costs nothing extra.
//
// # Metrics
//
// twinline_stream_clients{transport}, twinline_stream_messages_sent_total{transport},
// twinline_stream_clients_dropped_total{reason}, twinline_stream_rejected_total{reason},
// twinline_stream_messages_published_total{kind},
// twinline_stream_publish_duration_seconds, twinline_stream_delivery_seconds
// (a samples message's ingestTs → the end of its write to a client, per
// live samples message written), and, with Options.PublishWrite, the
// publish_write leg (the hub took a message → written); with Redis also
// twinline_stream_fanout_up, twinline_stream_fanout_errors_total,
// twinline_stream_fanout_resets_total, twinline_stream_fanout_stale_total and
// twinline_stream_fanout_local_total.
package hub
