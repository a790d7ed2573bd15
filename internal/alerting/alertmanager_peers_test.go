package alerting

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/twinline/twinline/internal/twin"
)

// TestEveryAlertmanagerGetsAlerts: Alertmanager peers do not gossip
// alerts, so each --alertmanager-url gets every post, as from Prometheus;
// one that refuses does not keep the others from them.
func TestEveryAlertmanagerGetsAlerts(t *testing.T) {
	var a, b atomic.Int32
	sa := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { a.Add(1) }))
	defer sa.Close()
	sb := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { b.Add(1) }))
	defer sb.Close()
	sc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) }))
	defer sc.Close()
	n := NewAlertmanager(AlertmanagerOptions{URLs: []string{sa.URL, sc.URL, sb.URL}})
	n.Notify(twin.Alarm{ID: "1", Machine: "m", State: twin.AlarmActive})
	n.Send(context.Background(), false)
	if a.Load() != 1 || b.Load() != 1 {
		t.Fatalf("posts: first Alertmanager %d, third %d; want 1 each", a.Load(), b.Load())
	}
}

// TestAlertmanagerErrorNamesHostOnly: a post's error reaches every reader
// of the alarms (lastError): it names scheme://host, never the path or
// credentials of the URL.
func TestAlertmanagerErrorNamesHostOnly(t *testing.T) {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusBadGateway) }))
	defer s.Close()
	u := strings.Replace(s.URL, "http://", "http://user:secret@", 1) + "/tenant-secret"
	n := NewAlertmanager(AlertmanagerOptions{URLs: []string{u}})
	err := n.postOne(context.Background(), u, []byte("[]"))
	if err == nil {
		t.Fatal("a 502 answer gave no error")
	}
	for _, leak := range []string{"user", "secret", "tenant-secret"} {
		if strings.Contains(err.Error(), leak) {
			t.Errorf("error %q names %q", err, leak)
		}
	}
	if !strings.Contains(err.Error(), strings.TrimPrefix(s.URL, "http://")) {
		t.Errorf("error %q does not name the host", err)
	}
}
