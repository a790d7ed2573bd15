package mqtt

import (
	"bytes"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"testing"

	"github.com/eclipse/paho.golang/packets"

	"github.com/twinline/twinline/internal/tlsconf/tlstest"
)

// TestLockedConnPackets: PUBLISH packets (written as several buffers) and
// PINGREQs written at once from two goroutines over TLS arrive whole, as
// paho's client and its pinger write them on a lockedConn.
func TestLockedConnPackets(t *testing.T) {
	ca := tlstest.NewCA(t)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{ca.ServerCert(t)}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const publishes, pings = 2000, 2000
	type tally struct {
		publishes, pings int
		err              error
	}
	got := make(chan tally, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- tally{err: err}
			return
		}
		defer c.Close()
		var n tally
		for n.publishes < publishes || n.pings < pings {
			p, err := packets.ReadPacket(c)
			if err != nil {
				n.err = err
				break
			}
			switch p.Type {
			case packets.PUBLISH:
				pb := p.Content.(*packets.Publish)
				if pb.Topic != "twinline/s/l/m/desired" || !bytes.Equal(pb.Payload, bytes.Repeat([]byte("x"), 3000)) {
					n.err = errBadPacket
				}
				n.publishes++
			case packets.PINGREQ:
				n.pings++
			}
			if n.err != nil {
				break
			}
		}
		got <- n
	}()
	raw, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: ca.Pool()})
	if err != nil {
		t.Fatal(err)
	}
	var conn net.Conn = &lockedConn{Conn: raw}
	defer conn.Close()
	var wg sync.WaitGroup
	wg.Go(func() {
		for range pings {
			if _, err := packets.NewControlPacket(packets.PINGREQ).WriteTo(conn); err != nil {
				t.Error(err)
				return
			}
		}
	})
	wg.Go(func() {
		for i := range publishes {
			cp := packets.NewControlPacket(packets.PUBLISH)
			pb := cp.Content.(*packets.Publish)
			pb.Topic, pb.QoS, pb.PacketID, pb.Retain = "twinline/s/l/m/desired", 1, uint16(i%60000+1), true
			pb.Properties = &packets.Properties{User: []packets.User{{Key: "traceparent", Value: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}}
			pb.Payload = bytes.Repeat([]byte("x"), 3000)
			if _, err := cp.WriteTo(conn); err != nil {
				t.Error(err)
				return
			}
		}
	})
	wg.Wait()
	n := <-got
	if n.err != nil || n.publishes != publishes || n.pings != pings {
		t.Errorf("server read %d publishes, %d pings, err %v; want %d, %d, none", n.publishes, n.pings, n.err, publishes, pings)
	}
}

var errBadPacket = errors.New("a PUBLISH arrived with another topic or payload")
