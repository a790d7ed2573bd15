package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/paho"
	paholog "github.com/eclipse/paho.golang/paho/log"
)

// The twin scenario measures the desired → device → reported round trip
// over MQTT: Machines devices (MQTT clients of the server's broker, at
// o.MQTT) subscribe to their desired topic; an open-loop sender PATCHes
// one machine's desired tempSetpoint at o.Rate per second over HTTP; a
// device answers each desired document it receives by publishing the same
// setpoint on its reported topic (QoS 1). Two figures, each from the
// PATCH's intended send time: the device received the desired document
// (desired), and the server acknowledged the device's reported patch
// (round trip: PUBACK, sent once the patch is durable).

const (
	twinSite = "bench"
	twinLine = "twin"
)

// TwinResult is the twin scenario's figures.
type TwinResult struct {
	Devices   int   `json:"devices"`
	Patches   int64 `json:"patches"`
	Delivered int64 `json:"delivered"`
	Reported  int64 `json:"reported"`
	// PatchErrors counts PATCHes the server did not answer with a 2xx
	// (by status or error in Errors); Lost the patches sent whose round
	// trip did not complete before the end (two quick patches of one
	// machine may reach its device as one document).
	PatchErrors int64            `json:"patchErrors,omitempty"`
	Errors      map[string]int64 `json:"errors,omitempty"`
	Lost        int64            `json:"lost"`
	Patch       *Summary         `json:"patch"`
	Desired     *Summary         `json:"desired"`
	RoundTrip   *Summary         `json:"roundTrip"`
}

// twinRun is the state of one twin scenario run.
type twinRun struct {
	o      Options
	client *http.Client
	start  time.Time
	// sent maps a setpoint (unique per PATCH) to its intended send time.
	mu   sync.Mutex
	sent map[int64]time.Time
	got  map[int64]bool // setpoints a device already received

	patch, desired, round *Shards
	patches, delivered    atomic.Int64
	reported, patchErrs   atomic.Int64
	attempted             atomic.Int64
	errs                  *errCounts
}

func runTwin(ctx context.Context, o Options, r *Result) error {
	if o.MQTT == "" {
		return errors.New("the twin scenario needs --mqtt HOST:PORT, the server's MQTT broker")
	}
	t := &twinRun{o: o, client: newHTTPClient(o.Workers, o.Token), sent: map[int64]time.Time{}, got: map[int64]bool{}, errs: &errCounts{},
		patch: NewShards(o.Workers), desired: NewShards(16), round: NewShards(16)}
	m := newMeter(time.Now())
	rep := startReporter(ctx, o.Progress, o.Terminal, o.Scenario, m, time.Second)
	defer rep.stop()

	names := machineList(o.Prefix, o.Machines)
	m.setPhase("register")
	if err := t.register(ctx, names); err != nil {
		return err
	}
	m.setPhase("connect")
	devices := make([]*paho.Client, len(names))
	defer func() {
		for _, d := range devices {
			if d != nil {
				_ = d.Disconnect(&paho.Disconnect{})
			}
		}
	}()
	sem := make(chan struct{}, o.ConnectWorkers)
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	for i, name := range names {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			d, err := t.connect(ctx, name, i)
			if err != nil {
				select {
				case errc <- err:
				default:
				}
				return
			}
			devices[i] = d
		}()
	}
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
	}

	m.setPhase("run")
	t.start = time.Now()
	runCtx, cancel := context.WithTimeout(ctx, o.Duration)
	defer cancel()
	pacer := NewPacer(t.start, o.Rate, 0)
	work := make(chan int64, 1024)
	for w := range o.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range work {
				// A PATCH sent is waited for, also past the end of the run.
				t.send(ctx, w, names[int(k)%len(names)], k)
				m.events.Add(1)
			}
		}()
	}
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
loop:
	for {
		select {
		case <-runCtx.Done():
			break loop
		case now := <-tick.C:
			from, to := pacer.Take(now)
			for k := from; k < to; k++ {
				select {
				case work <- k:
				case <-runCtx.Done():
					break loop
				}
			}
		}
	}
	close(work)
	wg.Wait()
	// Let the last round trips finish: up to 5 s after the sender stops.
	m.setPhase("drain")
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && t.reported.Load() < t.patches.Load() && ctx.Err() == nil {
		time.Sleep(50 * time.Millisecond)
	}
	r.Seconds = time.Since(t.start).Seconds()
	p, d, rt := t.patch.Merged().Summary(), t.desired.Merged().Summary(), t.round.Merged().Summary()
	r.Twin = &TwinResult{Devices: len(names), Patches: t.patches.Load(), Delivered: t.delivered.Load(),
		Reported: t.reported.Load(), PatchErrors: t.patchErrs.Load(), Errors: t.errs.snapshot(),
		Lost: t.attempted.Load() - t.reported.Load(), Patch: &p, Desired: &d, RoundTrip: &rt}
	return nil
}

// register puts the bench machines in the registry, on the bench site and
// line (their topics' levels).
func (t *twinRun) register(ctx context.Context, names []string) error {
	for _, name := range names {
		body := fmt.Sprintf(`{"site":%q,"line":%q}`, twinSite, twinLine)
		req, err := http.NewRequestWithContext(ctx, http.MethodPut, t.o.Target+"/api/v1/machines/"+name, bytes.NewReader([]byte(body)))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := t.client.Do(req)
		if err != nil {
			return fmt.Errorf("registering %s: %w", name, err)
		}
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			return fmt.Errorf("registering %s: %s: %s", name, resp.Status, msg)
		}
	}
	return nil
}

// connect starts one device: an MQTT client subscribed to its machine's
// desired topic, answering each desired document on its reported topic.
func (t *twinRun) connect(ctx context.Context, name string, i int) (*paho.Client, error) {
	conn, err := (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, "tcp", t.o.MQTT)
	if err != nil {
		return nil, fmt.Errorf("connecting device %s to %s: %w", name, t.o.MQTT, err)
	}
	base := "twinline/" + twinSite + "/" + twinLine + "/" + name
	var c *paho.Client
	c = paho.NewClient(paho.ClientConfig{
		Conn: conn, ClientID: name, PingHandler: &idlePinger{},
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			t.received(ctx, c, base, pr.Packet.Payload)
			return true, nil
		}},
	})
	cp := &paho.Connect{ClientID: name, KeepAlive: 0, CleanStart: true}
	if t.o.Token != "" {
		cp.UsernameFlag, cp.Username = true, "bench"
		cp.PasswordFlag, cp.Password = true, []byte(t.o.Token)
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if ca, err := c.Connect(cctx, cp); err != nil {
		return nil, fmt.Errorf("connecting device %s: %w", name, err)
	} else if ca.ReasonCode != 0 {
		return nil, fmt.Errorf("connecting device %s: CONNACK reason %#x", name, ca.ReasonCode)
	}
	sa, err := c.Subscribe(cctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: base + "/desired", QoS: 1}}})
	if err != nil {
		return nil, fmt.Errorf("subscribing device %s: %w", name, err)
	}
	if len(sa.Reasons) != 1 || sa.Reasons[0] > 1 {
		return nil, fmt.Errorf("subscribing device %s: SUBACK reasons %v", name, sa.Reasons)
	}
	return c, nil
}

// received handles a desired document at a device: it records the
// delivery, then reports the setpoint and records the round trip when
// the server acknowledges it.
func (t *twinRun) received(ctx context.Context, c *paho.Client, base string, payload []byte) {
	var doc struct {
		Desired map[string]any `json:"desired"`
	}
	if json.Unmarshal(payload, &doc) != nil {
		return
	}
	v, ok := doc.Desired["tempSetpoint"].(float64)
	if !ok {
		return
	}
	k := int64(v)
	now := time.Now()
	t.mu.Lock()
	at, known := t.sent[k]
	first := known && !t.got[k]
	if first {
		t.got[k] = true
	}
	t.mu.Unlock()
	if !first {
		return // a retained document from before, or a repeat
	}
	t.delivered.Add(1)
	t.desired.Shard(int(k)).Record(now.Sub(at))
	// Publishing waits for the PUBACK: not on paho's receive goroutine.
	go func() {
		body := []byte(`{"tempSetpoint":` + strconv.FormatInt(k, 10) + `}`)
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		pr, err := c.Publish(pctx, &paho.Publish{Topic: base + "/reported", QoS: 1, Payload: body})
		if err != nil || (pr != nil && pr.ReasonCode >= 0x80) {
			return
		}
		t.reported.Add(1)
		t.round.Shard(int(k)).Record(time.Since(at))
	}()
}

// send PATCHes desired setpoint k of machine name; k's intended send time
// is its pacer time.
func (t *twinRun) send(ctx context.Context, w int, name string, k int64) {
	at := t.start.Add(time.Duration(float64(k) / t.o.Rate * float64(time.Second)))
	t.mu.Lock()
	t.sent[k] = at
	t.mu.Unlock()
	t.attempted.Add(1)
	body := []byte(`{"tempSetpoint":` + strconv.FormatInt(k, 10) + `}`)
	req, err := http.NewRequestWithContext(ctx, http.MethodPatch, t.o.Target+"/api/v1/machines/"+name+"/twin/desired", bytes.NewReader(body))
	if err != nil {
		t.patchErrs.Add(1)
		return
	}
	req.Header.Set("Content-Type", "application/merge-patch+json")
	resp, err := t.client.Do(req)
	if err != nil {
		t.patchErrs.Add(1)
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // without the URL: one count per kind
		}
		t.errs.add(err.Error())
		return
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.patchErrs.Add(1)
		t.errs.add(resp.Status)
		return
	}
	t.patches.Add(1)
	t.patch.Shard(w).Record(time.Since(at))
}

// idlePinger is a paho Pinger that sends no PINGREQ (KeepAlive 0): over
// TLS paho's default pinger can interleave a PINGREQ with a PUBLISH.
type idlePinger struct{}

func (*idlePinger) Run(ctx context.Context, _ net.Conn, _ uint16) error {
	<-ctx.Done()
	return nil
}
func (*idlePinger) PacketSent()             {}
func (*idlePinger) PacketReceived()         {}
func (*idlePinger) PingResp()               {}
func (*idlePinger) SetDebug(paholog.Logger) {}
