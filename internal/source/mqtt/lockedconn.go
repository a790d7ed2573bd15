package mqtt

import (
	"context"
	"crypto/tls"
	"net"
	"net/url"
	"sync"

	"github.com/eclipse/paho.golang/autopaho"
)

// lockedConn is a connection whose MQTT packets never interleave. paho
// writes a packet as several buffers (header, properties, payload): on a
// TCP connection one writev, but a TLS connection takes them as several
// Writes, and the keep-alive pinger writes its PINGREQ from a goroutine of
// its own, so a PINGREQ could land inside a PUBLISH, which the broker then
// refuses as malformed (reason 0x99) and disconnects. paho's
// packets.ControlPacket.WriteTo holds a writer that is a sync.Locker for
// the whole packet: the client's writes and the pinger's, being on this
// one connection, take turns. (autopaho's WebSocket connection does the
// same; its TLS one does not.)
type lockedConn struct {
	net.Conn
	sync.Mutex
}

// dialTLSLocked is autopaho's AttemptConnection for a TLS broker URL: a
// TLS connection, as autopaho makes one, that is a lockedConn.
func dialTLSLocked(cfg *tls.Config) func(context.Context, autopaho.ClientConfig, *url.URL) (net.Conn, error) {
	return func(ctx context.Context, cc autopaho.ClientConfig, u *url.URL) (net.Conn, error) {
		if cc.ConnectTimeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, cc.ConnectTimeout)
			defer cancel()
		}
		d := tls.Dialer{Config: cfg}
		c, err := d.DialContext(ctx, "tcp", u.Host)
		if err != nil {
			return nil, err
		}
		return &lockedConn{Conn: c}, nil
	}
}

// tlsScheme reports whether autopaho connects to a URL of scheme over TLS
// (not WebSocket).
func tlsScheme(scheme string) bool {
	switch scheme {
	case "ssl", "tls", "mqtts", "mqtt+ssl", "tcps":
		return true
	}
	return false
}
