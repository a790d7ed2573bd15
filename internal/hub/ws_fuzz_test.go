package hub

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
	"time"
)

// recordConn is a net.Conn whose writes are recorded and reads fail: the
// reader under test gets its bytes from elsewhere.
type recordConn struct {
	net.Conn
	out    bytes.Buffer
	closed bool
}

func (c *recordConn) Write(b []byte) (int, error)      { return c.out.Write(b) }
func (c *recordConn) Close() error                     { c.closed = true; return nil }
func (c *recordConn) SetWriteDeadline(time.Time) error { return nil }

// frame builds a masked client frame.
func frame(op byte, fin bool, payload []byte) []byte {
	b := []byte{op}
	if fin {
		b[0] |= 0x80
	}
	switch n := len(payload); {
	case n <= 125:
		b = append(b, 0x80|byte(n))
	case n <= 0xffff:
		b = append(b, 0x80|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	mask := []byte{1, 2, 3, 4}
	b = append(b, mask...)
	for i, c := range payload {
		b = append(b, c^mask[i&3])
	}
	return b
}

// FuzzReadLoop: whatever a client sends, the reader neither panics nor
// hangs (it ends at the end of the input), and what it writes back is
// whole server frames: pongs, and at most one close.
func FuzzReadLoop(f *testing.F) {
	f.Add(frame(opPing, true, []byte("hi")))
	f.Add(append(frame(opText, true, []byte("ignored")), frame(opClose, true, []byte{0x03, 0xe8})...))
	f.Add(frame(opBinary, false, bytes.Repeat([]byte{7}, 300)))
	f.Add([]byte{0x89, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0x81, 0x05, 'h', 'e', 'l', 'l', 'o'}) // unmasked
	f.Add(append(frame(opText, false, []byte{'a', 0xe2}), frame(opContinuation, true, []byte{0x82, 0xac})...))
	f.Add(frame(opText, true, []byte{0xed, 0xa0, 0x80}))
	f.Add(frame(opContinuation, true, []byte("orphan")))
	f.Add(append(frame(opText, false, nil), frame(opBinary, true, nil)...))
	f.Add(frame(opBinary, true, make([]byte, maxClientMessage+1)))
	f.Fuzz(func(t *testing.T, in []byte) {
		conn := &recordConn{}
		c := &rawConn{conn: conn, timeout: time.Second, done: make(chan struct{})}
		c.readLoop(bytes.NewReader(in))
		select {
		case <-c.done:
		default:
			t.Fatal("the reader returned without ending the connection")
		}
		out, closes := conn.out.Bytes(), 0
		for len(out) > 0 {
			if len(out) < 2 {
				t.Fatalf("a torn frame written back: % x", out)
			}
			op, n := out[0]&0x0f, int(out[1]&0x7f)
			if out[0]&0x80 == 0 || out[1]&0x80 != 0 || n > 125 || len(out) < 2+n {
				t.Fatalf("not a whole, final, unmasked control frame: % x", out)
			}
			switch op {
			case opPong:
			case opClose:
				closes++
			default:
				t.Fatalf("wrote opcode %#x to the client", op)
			}
			out = out[2+n:]
		}
		if closes > 1 {
			t.Fatalf("%d close frames written", closes)
		}
	})
}
