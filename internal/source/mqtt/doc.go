// Package mqtt ingests telemetry over MQTT: an embedded broker (Broker, on
// mochi-mqtt) that devices publish to, and a subscriber (Subscriber, on
// paho.golang's autopaho) to an external broker such as Mosquitto.
//
// Both read the topic twinline/{site}/{line}/{machineId}/telemetry, whose
// payload is one event as JSON (an object, or an array of objects) or
// InfluxDB line protocol (one event per line); the first byte that is not
// white space tells which. The machine id of the topic wins over one in the
// payload and fills in a missing one; site and line go to the registry.
//
// Both hand decoded events to the same consumer contract: a Submit function
// that returns once the batch is durable. A QoS 1 message is acknowledged
// (PUBACK from the broker, manual acknowledgement to the external broker)
// only after Submit has returned without error, so an acknowledged message
// is never lost; one that was not acknowledged is sent again by the client
// or the external broker (at least once: duplicates are possible, and an
// event id in the payload lets the engine drop them).
//
// A bad message (wrong topic shape, undecodable payload, a machine the fleet
// limit refuses) is counted, logged with its topic and dropped: an MQTT 5
// publisher gets a PUBACK with a failure reason code (0x90, 0x99, 0x97), an
// MQTT 3.1.1 publisher, which has no such code, a plain PUBACK. It never
// ends the client's session nor the subscription.
//
// The embedded broker authenticates clients when Deps.Authenticate is set
// (without it, it is open: bind it to loopback or a trusted network). At
// CONNECT the password is a token (the user name is free) or, on the TLS
// listener without a password, the verified client certificate stands for
// a device; bad credentials are refused with 0x86 (MQTT 3.1.1: 4), an
// identity with neither the ingest nor the read scope with 0x87 (5), a
// failing Authenticate with 0x88 (3). Each client then acts as its
// identity: it publishes only with the ingest scope and only to
// twinline/{site}/… of a site it sees (a device only where the machine id
// level is its machine); it subscribes only with the read scope and, when
// restricted to sites, only to filters under twinline/{site} of its sites
// with no wildcard in the site level. Refusals are 0x87 in the PUBACK or
// SUBACK. Deps.Authorize is asked about each telemetry message's machine
// before the submit (0x87 when refused), and the submit context carries
// the identity (auth.FromContext).
//
// Retained messages are accepted only under twinline/ and count against a
// quota per identity (MaxRetained, MaxRetainedBytes; 0x97 beyond it),
// whether or not the broker authenticates.
//
// Both also carry twin control (control*.go): PublishDesired and
// ClearDesired keep a machine's desired document and delta as retained
// messages on twinline/{site}/{line}/{machineId}/desired and
// …/desired/delta, PublishCommand sends a command with QoS 1 on
// …/commands/{cmdId}, and what devices send on …/reported and
// …/commands/{cmdId}/response goes to Deps.Control before it is
// acknowledged. A command is reported delivered on the device's PUBACK
// (embedded broker) or the external broker's (subscriber). Nobody but the
// server publishes the desired and command topics; a device may subscribe
// to its own (see mayReceiveControl).
package mqtt
