package alerting

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/twinline/twinline/internal/twin"
)

// alertmanagerBinary is the real Alertmanager the test runs:
// TWINLINE_TEST_ALERTMANAGER, else the Debian package's.
func alertmanagerBinary(t *testing.T) string {
	bin := os.Getenv("TWINLINE_TEST_ALERTMANAGER")
	if bin == "" {
		bin = "/usr/bin/prometheus-alertmanager"
	}
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("Alertmanager %s missing (CI=true): %v", bin, err)
		}
		t.Skipf("Alertmanager %s missing, skipping (apt-get install prometheus-alertmanager; CI=true fails instead)", bin)
	}
	return bin
}

func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// poll waits for cond, checked every 50 ms, for at most d: the
// Alertmanager is another process, with its own clock.
func poll(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %s", what, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The real Alertmanager takes twinline's alerts and notifies its own
// webhook receiver: firing, then resolved once the alarm clears.
func TestRealAlertmanager(t *testing.T) {
	bin := alertmanagerBinary(t)
	type notification struct {
		Status string `json:"status"`
		Alerts []struct {
			Status string            `json:"status"`
			Labels map[string]string `json:"labels"`
		} `json:"alerts"`
	}
	var (
		mu  sync.Mutex
		got []notification
	)
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var n notification
		body, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(body, &n); err != nil {
			t.Errorf("decoding notification: %v", err)
		}
		mu.Lock()
		got = append(got, n)
		mu.Unlock()
	}))
	defer rcv.Close()
	dir := t.TempDir()
	cfg := fmt.Sprintf(`route:
  receiver: hook
  group_by: [alertname, machine]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: %s
        send_resolved: true
`, rcv.URL)
	if err := os.WriteFile(filepath.Join(dir, "am.yml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "--config.file="+filepath.Join(dir, "am.yml"), "--storage.path="+dir,
		"--web.listen-address="+addr, "--cluster.listen-address=")
	logs := &lockedLog{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); cmd.Wait() }()
	base := "http://" + addr
	poll(t, "Alertmanager ready", 30*time.Second, func() bool {
		resp, err := http.Get(base + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})

	clk := newClock()
	clk.Set(time.Now())
	f := newFixture(t, clk)
	n := NewAlertmanager(AlertmanagerOptions{URLs: []string{base}, Locate: locate, Now: clk.Now,
		Active: func() []twin.Alarm { return f.alarms.List(false, "") }})
	f.alarms.OnChange(func(al twin.Alarm, _ bool) { n.Notify(al) })
	f.observe("press-1", 95)
	if !n.Send(context.Background(), false) {
		t.Fatalf("Alertmanager refused the alert:\n%s", logs)
	}
	// Alertmanager lists it as active, with twinline's labels.
	var listed []struct {
		Labels map[string]string `json:"labels"`
		Status struct{ State string }
	}
	resp, err := http.Get(base + "/api/v2/alerts")
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(resp.Body).Decode(&listed)
	resp.Body.Close()
	if len(listed) != 1 || listed[0].Labels["alertname"] != AlertHigh || listed[0].Labels["line"] != "line-press-1" || listed[0].Status.State != "active" {
		t.Fatalf("Alertmanager lists %+v", listed)
	}
	status := func(want string) func() bool {
		return func() bool {
			mu.Lock()
			defer mu.Unlock()
			for _, x := range got {
				if x.Status == want && len(x.Alerts) == 1 && x.Alerts[0].Labels["machine"] == "press-1" {
					return true
				}
			}
			return false
		}
	}
	poll(t, "firing notification", 30*time.Second, status("firing"))
	clk.Set(time.Now())
	f.observe("press-1", 10)
	if !n.Send(context.Background(), false) {
		t.Fatal("Alertmanager refused the resolved alert")
	}
	poll(t, "resolved notification", 30*time.Second, status("resolved"))
}

type lockedLog struct {
	mu  sync.Mutex
	buf []byte
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	return len(p), nil
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.buf)
}
