package e2e

import (
	"context"
	"net"

	paholog "github.com/eclipse/paho.golang/paho/log"
)

// quietPinger is a paho Pinger that sends no PINGREQ. paho's default one
// sends its first at once after CONNACK, from a goroutine of its own; over
// TLS a packet is several writes, and that PINGREQ can land inside the
// test's PUBLISH, which the broker then refuses (reason 0x99). The tests
// last far less than the keep-alive. (The same as internal/source/mqtt's.)
type quietPinger struct{}

func (quietPinger) Run(ctx context.Context, _ net.Conn, _ uint16) error {
	<-ctx.Done()
	return nil
}
func (quietPinger) PacketSent()             {}
func (quietPinger) PacketReceived()         {}
func (quietPinger) PingResp()               {}
func (quietPinger) SetDebug(paholog.Logger) {}
