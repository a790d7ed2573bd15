package hub

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"
)

// TestReadLoopFailsBadDataMessages feeds the reader raw client frames and
// checks the close code it fails the connection with (RFC 6455 §7.4.1), or
// that it sends none.
func TestReadLoopFailsBadDataMessages(t *testing.T) {
	cat := func(frames ...[]byte) []byte { return bytes.Join(frames, nil) }
	euro := []byte("€") // e2 82 ac
	long := bytes.Repeat([]byte("a"), 1000)
	tests := []struct {
		name string
		in   []byte
		want uint16 // 0: no close frame
	}{
		{"valid text", frame(opText, true, []byte("grüße €")), 0},
		{"empty text", frame(opText, true, nil), 0},
		{"binary is not UTF-8 checked", frame(opBinary, true, []byte{0xff, 0xfe}), 0},
		{"character split over fragments", cat(frame(opText, false, euro[:1]), frame(opPing, true, nil), frame(opContinuation, false, euro[1:2]), frame(opContinuation, true, euro[2:])), 0},
		{"character split at a chunk boundary", frame(opText, true, append(bytes.Repeat([]byte("a"), 511), euro...)), 0},
		{"long valid text in fragments", cat(frame(opText, false, long), frame(opContinuation, false, long), frame(opContinuation, true, long)), 0},
		{"message at the limit", frame(opBinary, true, make([]byte, maxClientMessage)), 0},

		{"invalid UTF-8", frame(opText, true, []byte{'a', 0xff, 'b'}), closeInvalidPayload},
		{"encoded surrogate", frame(opText, true, []byte{0xed, 0xa0, 0x80}), closeInvalidPayload},
		{"text ends inside a character", frame(opText, true, euro[:2]), closeInvalidPayload},
		{"fragments end inside a character", cat(frame(opText, false, euro[:1]), frame(opContinuation, true, euro[1:2])), closeInvalidPayload},
		{"invalid UTF-8 in a continuation", cat(frame(opText, false, []byte("ok")), frame(opContinuation, true, []byte{0xc0, 0x80})), closeInvalidPayload},

		{"continuation without a start", frame(opContinuation, true, []byte("x")), closeProtocolError},
		{"continuation after a final frame", cat(frame(opText, true, []byte("x")), frame(opContinuation, true, []byte("y"))), closeProtocolError},
		{"new message inside a fragmented one", cat(frame(opText, false, []byte("x")), frame(opBinary, true, []byte("y"))), closeProtocolError},
		{"fragmented control frame", frame(opPing, false, nil), closeProtocolError},

		{"frame over the limit", frame(opBinary, true, make([]byte, maxClientMessage+1)), closeMessageTooBig},
		{"fragments over the limit", cat(frame(opText, false, make([]byte, maxClientMessage/2)), frame(opContinuation, true, make([]byte, maxClientMessage/2+1))), closeMessageTooBig},
		{"huge length, no payload", []byte{0x82, 0xff, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4}, closeMessageTooBig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := &recordConn{}
			c := &rawConn{conn: conn, timeout: time.Second, done: make(chan struct{})}
			c.readLoop(bytes.NewReader(tt.in))
			out := conn.out.Bytes()
			var got uint16
			switch {
			case len(out) == 0:
			case len(out) == 4 && out[0] == 0x80|opClose && out[1] == 2:
				got = binary.BigEndian.Uint16(out[2:])
			default:
				// A pong for the ping in the fragments test comes first.
				if i := bytes.Index(out, []byte{0x80 | opClose, 2}); i >= 0 && len(out) == i+4 {
					got = binary.BigEndian.Uint16(out[i+2:])
				} else if !bytes.Equal(out, []byte{0x80 | opPong, 0}) {
					t.Fatalf("wrote % x, want at most a close frame", out)
				}
			}
			if got != tt.want {
				t.Errorf("close code = %d, want %d", got, tt.want)
			}
			if tt.want != 0 && !conn.closed {
				t.Errorf("connection not closed after failing it")
			}
		})
	}
}
