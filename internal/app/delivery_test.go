package app

import (
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/control"
	"github.com/twinline/twinline/internal/twin"
)

// recordingPublisher is an MQTT side that tells which commands it was
// given to publish.
type recordingPublisher struct{ commands chan string }

func (recordingPublisher) PublishDesired(string, string, string, uint64, map[string]any, map[string]any) error {
	return nil
}
func (recordingPublisher) ClearDesired(string, string, string) error { return nil }
func (p recordingPublisher) PublishCommand(_, _, _, id string, _ []byte) error {
	p.commands <- id
	return nil
}

// TestDeliveryPublishesOthersCommandsOnOwnSidesOnly: a command this
// replica created goes out on every MQTT side; one another replica created
// (Remote) only on this replica's own (the embedded broker), not on the
// external broker every replica shares — its creator publishes it there.
func TestDeliveryPublishesOthersCommandsOnOwnSidesOnly(t *testing.T) {
	reg, err := twin.OpenRegistryFile(filepath.Join(t.TempDir(), "registry.json"), time.Now, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := reg.Put("press-07", twin.Info{Site: "plant", Line: "l1"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		remote bool
		want   []string
	}{
		{"own", false, []string{"embedded", "external"}},
		{"another replica's", true, []string{"embedded"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			embedded := recordingPublisher{make(chan string, 4)}
			external := recordingPublisher{make(chan string, 4)}
			d := &delivery{registry: reg, logger: slog.New(slog.DiscardHandler)}
			d.add(embedded, false)
			d.add(external, true)
			now := time.Now()
			d.commandChanged(control.Command{ID: "c-1", Machine: "press-07", Name: "stop", State: control.StatePending,
				CreatedAt: now, ExpiresAt: now.Add(time.Minute), Remote: tc.remote,
				History: []control.Transition{{State: control.StatePending, At: now}}})
			// The publications run off the caller's path: wait for the
			// expected ones, then check the other side got nothing.
			var got []string
			if id := <-embedded.commands; id == "c-1" {
				got = append(got, "embedded")
			}
			if !tc.remote {
				if id := <-external.commands; id == "c-1" {
					got = append(got, "external")
				}
			} else {
				select {
				case <-external.commands:
					got = append(got, "external")
				case <-time.After(100 * time.Millisecond):
				}
			}
			if diff := cmp.Diff(got, tc.want); diff != "" {
				t.Errorf("sides published on (-got +want):\n%s", diff)
			}
		})
	}
}

// TestCommandAuditEntry: the transitions no audited request made —
// deliveries, answers over MQTT or in process, expiry — are recorded;
// creation and HTTP answers (audited by their routes) and other
// replicas' transitions are not.
func TestCommandAuditEntry(t *testing.T) {
	at := time.Date(2026, 12, 7, 15, 0, 0, 0, time.UTC)
	cmd := func(remote bool, steps ...control.Transition) control.Command {
		return control.Command{ID: "c-1", Machine: "press-07", Name: "stop", Remote: remote, History: steps}
	}
	created := control.Transition{State: control.StatePending, At: at, By: "alice"}
	for _, tc := range []struct {
		name       string
		c          control.Command
		ok         bool
		action, by string
	}{
		{"created", cmd(false, created), false, "", ""},
		{"delivered over mqtt", cmd(false, created, control.Transition{State: control.StateDelivered, At: at, Via: "mqtt"}), true, "command.delivered", "twinline"},
		{"fetched over http", cmd(false, created, control.Transition{State: control.StateDelivered, At: at, Via: "http"}), true, "command.delivered", "twinline"},
		{"answered over mqtt", cmd(false, created, control.Transition{State: control.StateSucceeded, At: at, By: "press-07", Via: "mqtt"}), true, "command.succeeded", "press-07"},
		{"answered over http", cmd(false, created, control.Transition{State: control.StateSucceeded, At: at, By: "press-07", Via: "http"}), false, "", ""},
		{"expired", cmd(false, created, control.Transition{State: control.StateExpired, At: at}), true, "command.expired", "twinline"},
		{"another replica's", cmd(true, created, control.Transition{State: control.StateExpired, At: at}), false, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, ok := commandAuditEntry(tc.c)
			if ok != tc.ok || e.Action != tc.action || e.Actor != tc.by {
				t.Errorf("got %v %q by %q, want %v %q by %q", ok, e.Action, e.Actor, tc.ok, tc.action, tc.by)
			}
			if ok && (e.Machine != "press-07" || e.Target != "c-1" || e.Outcome != "ok") {
				t.Errorf("entry %+v", e)
			}
		})
	}
}
