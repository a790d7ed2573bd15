package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/eclipse/paho.golang/paho"
	influxdb2 "github.com/influxdata/influxdb-client-go/v2"

	"github.com/twinline/twinline/internal/tlsconf/tlstest"
)

// tokenCreate runs `twinline token create` and returns the secret (its
// last line of output).
func tokenCreate(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(binary, append([]string{"token", "create"}, args...)...).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("token create %v: %v\n%s", args, err, stderr)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1]
}

func bearer(secret string) []string { return []string{"Authorization", "Bearer " + secret} }

// eventually polls check until it reports true, failing after d.
func eventually(t *testing.T, d time.Duration, what string, check func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	c := ctx(t, d)
	for !check() {
		select {
		case <-c.Done():
			t.Fatalf("%s: not within %s", what, d)
		case <-time.After(20 * time.Millisecond):
		}
	}
	return time.Since(start)
}

// TestClosedByDefault: on a network address without a token the server
// refuses to start, saying what to do; --auth=off starts, warns and says
// so in /readyz; a bootstrap token file opens the way.
func TestClosedByDefault(t *testing.T) {
	dir := t.TempDir()
	out, err := exec.Command(binary, "serve", "--listen", "0.0.0.0:0", "--data-dir", dir).CombinedOutput()
	if err == nil {
		t.Fatalf("serve on 0.0.0.0 without a token started:\n%s", out)
	}
	for _, want := range []string{"refusing to start", "twinline token create", "--bootstrap-token-file", "--auth=off"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the refusal does not say %q:\n%s", want, out)
		}
	}

	open := start(t, "", "--listen", "0.0.0.0:0", "--auth", "off")
	if !strings.Contains(open.logs.String(), "auth is off") {
		t.Errorf("--auth=off did not warn:\n%s", open.logs.String())
	}
	var ready struct{ Status, Detail string }
	open.get("/readyz").json(t, &ready)
	if ready.Status != "degraded" || !strings.Contains(ready.Detail, "auth is off") {
		t.Errorf("/readyz with --auth=off: %+v", ready)
	}

	secretFile := filepath.Join(t.TempDir(), "token")
	secret := "a-bootstrap-secret-of-more-than-32-characters"
	if err := os.WriteFile(secretFile, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := start(t, "", "--listen", "0.0.0.0:0", "--bootstrap-token-file", secretFile)
	if r := s.get("/api/v1/machines"); r.status != http.StatusUnauthorized {
		t.Errorf("no token: %d", r.status)
	}
	if r := s.do("GET", "/api/v1/tokens", "", nil, bearer(secret)...); r.status != 200 || !strings.Contains(string(r.body), `"bootstrap"`) {
		t.Errorf("bootstrap token: %d %s", r.status, r.body)
	}
}

// TestTokensLifecycle: tokens made by the CLI while the server runs are in
// force within 2 s, and so are revocations; the unmodified InfluxDB
// client library writes with a token (and is refused without).
func TestTokensLifecycle(t *testing.T) {
	dir := t.TempDir()
	admin := tokenCreate(t, "--data-dir", dir, "--name", "admin", "--scopes", "admin,read,operate,ingest")
	s := start(t, dir)
	if r := s.get("/api/v1/machines"); r.status != http.StatusUnauthorized || r.header.Get("WWW-Authenticate") == "" {
		t.Fatalf("loopback with a token, none sent: %d %v", r.status, r.header)
	}
	dev := tokenCreate(t, "--data-dir", dir, "--name", "press-9", "--scopes", "ingest", "--sites", "lyon")
	ingest := func(secret string) int {
		return s.do("POST", "/api/v1/events", "application/json", []byte(`{"machineId":"press-9","temp":70}`), bearer(secret)...).status
	}
	took := eventually(t, 5*time.Second, "a token created by the CLI works", func() bool { return ingest(dev) == http.StatusAccepted })
	t.Logf("CLI-created token in force after %s", took)

	// The unmodified InfluxDB client: the token as its token.
	client := influxdb2.NewClient(s.url, dev)
	defer client.Close()
	p := influxdb2.NewPoint("press", map[string]string{"machine_id": "press-9"}, map[string]any{"temp": 71.5}, time.Now())
	if err := client.WriteAPIBlocking("acme", "plant").WritePoint(ctx(t, 10*time.Second), p); err != nil {
		t.Fatalf("influx client with the token: %v", err)
	}
	bad := influxdb2.NewClient(s.url, "tl_not-a-token")
	defer bad.Close()
	if err := bad.WriteAPIBlocking("acme", "plant").WritePoint(ctx(t, 10*time.Second), p); err == nil || !strings.Contains(err.Error(), "unauthorized") {
		t.Errorf("influx client with a made-up token: %v, want unauthorized", err)
	}
	// InfluxDB 1.x style: ?u=&p=.
	if r := s.do("POST", "/write?db=x&u=press-9&p="+dev, "text/plain", []byte("press,machine_id=press-9 temp=72")); r.status != 204 {
		t.Errorf("/write?p=token: %d %s", r.status, r.body)
	}
	var latest struct {
		Metrics map[string]struct{ Value float64 }
	}
	s.do("GET", "/api/v1/machines/press-9/latest", "", nil, bearer(admin)...).json(t, &latest)
	if latest.Metrics["press_temp"].Value != 72 {
		t.Errorf("latest %+v", latest)
	}

	if out, err := exec.Command(binary, "token", "revoke", "press-9", "--data-dir", dir).CombinedOutput(); err != nil {
		t.Fatalf("token revoke: %v\n%s", err, out)
	}
	took = eventually(t, 2*time.Second, "a revocation by the CLI is in force", func() bool { return ingest(dev) == http.StatusUnauthorized })
	t.Logf("CLI revocation in force after %s", took)

	var audit struct {
		Entries []struct{ Actor, Action, Target, Outcome string }
	}
	s.do("GET", "/api/v1/audit", "", nil, bearer(admin)...).json(t, &audit)
	actions := map[string]bool{}
	for _, e := range audit.Entries {
		actions[e.Action+" "+e.Target] = true
	}
	if !actions["token.create press-9"] || !actions["token.revoke press-9"] {
		t.Errorf("audit %+v: want the CLI's create and revoke", audit.Entries)
	}
	if strings.Contains(s.logs.String(), dev) || strings.Contains(s.logs.String(), admin) {
		t.Errorf("a token secret is in the server log")
	}
}

// TestStreamAuth: the live stream with a header token, with a single-use
// ticket (reuse refused), and without credentials (refused); a signed-in
// dashboard gets its ticket with the CSRF header.
func TestStreamAuth(t *testing.T) {
	dir := t.TempDir()
	reader := tokenCreate(t, "--data-dir", dir, "--name", "reader", "--scopes", "read")
	s := start(t, dir)

	// Header token, WebSocket and SSE.
	c, _, err := websocket.Dial(ctx(t, 10*time.Second), "ws"+strings.TrimPrefix(s.url, "http")+"/api/v1/stream?all=1",
		&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + reader}}})
	if err != nil {
		t.Fatalf("WebSocket with a token: %v", err)
	}
	c.CloseNow()
	if _, resp, err := websocket.Dial(ctx(t, 10*time.Second), "ws"+strings.TrimPrefix(s.url, "http")+"/api/v1/stream?all=1", nil); err == nil || resp == nil || resp.StatusCode != 401 {
		t.Errorf("WebSocket without credentials: %v %v, want 401", err, resp)
	}

	// The dashboard: sign in, then a ticket per connection.
	jar := &cookieJar{}
	signIn := s.do("POST", "/api/v1/session", "application/json", []byte(`{"token":"`+reader+`"}`))
	if signIn.status != 200 {
		t.Fatalf("sign in: %d %s", signIn.status, signIn.body)
	}
	jar.take(signIn.header)
	var sess struct{ CSRF string }
	signIn.json(t, &sess)
	if r := s.do("POST", "/api/v1/stream/tickets", "application/json", []byte(`{}`), "Cookie", jar.cookie); r.status != 403 {
		t.Errorf("ticket without the CSRF header: %d, want 403", r.status)
	}
	r := s.do("POST", "/api/v1/stream/tickets", "application/json", []byte(`{}`), "Cookie", jar.cookie, "X-CSRF-Token", sess.CSRF)
	if r.status != 201 {
		t.Fatalf("ticket: %d %s", r.status, r.body)
	}
	var ticket struct{ Ticket string }
	r.json(t, &ticket)
	url := "ws" + strings.TrimPrefix(s.url, "http") + "/api/v1/stream?all=1&ticket=" + ticket.Ticket
	c, _, err = websocket.Dial(ctx(t, 10*time.Second), url, nil)
	if err != nil {
		t.Fatalf("WebSocket with a ticket: %v", err)
	}
	c.CloseNow()
	if _, resp, err := websocket.Dial(ctx(t, 10*time.Second), url, nil); err == nil || resp == nil || resp.StatusCode != 401 {
		t.Errorf("the ticket used again: %v %v, want 401", err, resp)
	}
	if r := s.do("DELETE", "/api/v1/session", "", nil, "Cookie", jar.cookie, "X-CSRF-Token", sess.CSRF); r.status != 204 {
		t.Errorf("sign out: %d %s", r.status, r.body)
	}
	if r := s.do("GET", "/api/v1/machines", "", nil, "Cookie", jar.cookie); r.status != 401 {
		t.Errorf("the session after sign-out: %d, want 401", r.status)
	}
}

// cookieJar keeps the session cookie of a sign-in answer.
type cookieJar struct{ cookie string }

func (j *cookieJar) take(h http.Header) {
	for _, c := range (&http.Response{Header: h}).Cookies() {
		if c.Name == "twinline_session" {
			j.cookie = c.Name + "=" + c.Value
		}
	}
}

// TestCrossSiteRefused: a foreign page's requests — text/plain and form
// posts, a foreign Origin, a rebound Host, a WebSocket upgrade with
// Origin = Host = the attacker's name — are refused by the binary, open
// on loopback; the same from the dashboard's own origin works.
func TestCrossSiteRefused(t *testing.T) {
	s := start(t, "")
	host := strings.TrimPrefix(s.url, "http://")
	if r := s.do("PUT", "/api/v1/machines/m1", "application/json", []byte(`{"site":"lyon"}`)); r.status != 201 {
		t.Fatalf("PUT: %d %s", r.status, r.body)
	}
	tests := []struct {
		name, method, path, ct, body string
		header                       []string
		status                       int
	}{
		{"text/plain note", "POST", "/api/v1/machines/m1/notes", "text/plain", `{"text":"x"}`, nil, 415},
		{"text/plain events", "POST", "/api/v1/events", "text/plain", `{"machineId":"m1","temp":1}`, nil, 415},
		{"foreign Origin note", "POST", "/api/v1/machines/m1/notes", "application/json", `{"text":"x"}`, []string{"Origin", "http://evil.example"}, 403},
		{"foreign Origin delete", "DELETE", "/api/v1/machines/m1", "", "", []string{"Origin", "http://evil.example"}, 403},
		{"rebound Host", "GET", "/api/v1/machines", "", "", []string{"Host", "evil.example:" + strings.Split(host, ":")[1]}, 421},
		{"same origin note", "POST", "/api/v1/machines/m1/notes", "application/json", `{"text":"x"}`, []string{"Origin", s.url, "Sec-Fetch-Site", "same-origin"}, 201},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, s.url+tt.path, strings.NewReader(tt.body))
			if tt.ct != "" {
				req.Header.Set("Content-Type", tt.ct)
			}
			for i := 0; i+1 < len(tt.header); i += 2 {
				if tt.header[i] == "Host" {
					req.Host = tt.header[i+1]
				} else {
					req.Header.Set(tt.header[i], tt.header[i+1])
				}
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Errorf("got %d, want %d", resp.StatusCode, tt.status)
			}
		})
	}
	// The rebinding page's WebSocket: Host and Origin both the attacker's.
	dialer := &net.Dialer{}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return dialer.DialContext(ctx, "tcp", host)
	}}}
	_, resp, err := websocket.Dial(ctx(t, 10*time.Second), "ws://evil.example:"+strings.Split(host, ":")[1]+"/api/v1/stream?all=1",
		&websocket.DialOptions{HTTPClient: hc, HTTPHeader: http.Header{"Origin": {"http://evil.example:" + strings.Split(host, ":")[1]}}})
	if err == nil || resp == nil || resp.StatusCode != 421 {
		t.Errorf("rebound WebSocket upgrade: %v %v, want 421", err, resp)
	}
	var notes struct{ Notes []struct{ Text string } }
	s.get("/api/v1/machines/m1/notes").json(t, &notes)
	if len(notes.Notes) != 1 {
		t.Errorf("notes %+v: want only the same-origin one", notes.Notes)
	}
	if r := s.get("/api/v1/machines/m1"); r.status != 200 {
		t.Errorf("the machine after a refused foreign DELETE: %d", r.status)
	}
}

// TestRevocationAcrossReplicas: two replicas on PostgreSQL (A processes, B
// is an api replica) share tokens; a token revoked on A is refused by B
// within 2 s.
func TestRevocationAcrossReplicas(t *testing.T) {
	db := pgDatabase(t)
	admin := tokenCreate(t, "--postgres-url", db, "--name", "admin", "--scopes", "admin,read")
	a := start(t, "", "--store", "postgres", "--postgres-url", db)
	b := start(t, "", "--role", "api", "--store", "postgres", "--postgres-url", db,
		"--redis-url", "redis://"+redisAddr+"/0", "--redis-prefix", redisPrefix(t))
	r := a.do("POST", "/api/v1/tokens", "application/json", []byte(`{"name":"viewer","scopes":["read"]}`), bearer(admin)...)
	if r.status != 201 {
		t.Fatalf("create on A: %d %s", r.status, r.body)
	}
	var created struct{ Token string }
	r.json(t, &created)
	eventually(t, 2*time.Second, "B knows A's new token", func() bool {
		return b.do("GET", "/api/v1/machines", "", nil, bearer(created.Token)...).status == 200
	})
	if r := a.do("DELETE", "/api/v1/tokens/viewer", "", nil, bearer(admin)...); r.status != 204 {
		t.Fatalf("revoke on A: %d %s", r.status, r.body)
	}
	took := eventually(t, 2*time.Second, "B refuses the token revoked on A", func() bool {
		return b.do("GET", "/api/v1/machines", "", nil, bearer(created.Token)...).status == 401
	})
	t.Logf("revocation on A in force on B after %s", took)
}

// TestTLS: HTTPS and MQTTS with a test CA; the certificate is replaced on
// disk and served without a restart; a device certificate writes for its
// own machine only (HTTPS and MQTTS), with no token.
func TestTLS(t *testing.T) {
	ca := tlstest.NewCA(t)
	dir := t.TempDir()
	certFile, keyFile := ca.WriteServerFiles(t, dir)
	caFile := ca.WriteCAFile(t, dir)
	mqtts := freeAddr(t)
	dataDir := t.TempDir()
	admin := tokenCreate(t, "--data-dir", dataDir, "--name", "admin", "--scopes", "admin,read,ingest")
	s := start(t, dataDir, "--tls-cert", certFile, "--tls-key", keyFile, "--tls-client-ca", caFile, "--mqtt-tls-listen", mqtts)
	if !strings.HasPrefix(s.url, "https://") {
		t.Fatalf("url %s: want https", s.url)
	}
	s.http = &http.Client{Transport: &http.Transport{TLSClientConfig: ca.ClientConfig()}}
	if r := s.do("GET", "/api/v1/machines", "", nil, bearer(admin)...); r.status != 200 {
		t.Fatalf("HTTPS with a token: %d %s", r.status, r.body)
	}
	first := serverCert(t, s.url, ca)

	// A device certificate (CN = its machine), no token.
	dev := &http.Client{Transport: &http.Transport{TLSClientConfig: ca.ClientConfig(ca.ClientCert(t, "press-1"))}}
	post := func(machine string) int {
		resp, err := dev.Post(s.url+"/api/v1/events", "application/json", strings.NewReader(`{"machineId":"`+machine+`","temp":1}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := post("press-1"); got != 202 {
		t.Errorf("device writing for its machine: %d", got)
	}
	if got := post("press-2"); got != 400 {
		t.Errorf("device writing for another machine: %d, want 400", got)
	}
	if resp, err := dev.Get(s.url + "/api/v1/machines"); err != nil || resp.StatusCode != 403 {
		t.Errorf("device reading: %v %v, want 403", err, resp)
	}

	// MQTTS with the device certificate.
	conn, err := tls.Dial("tcp", mqtts, ca.ClientConfig(ca.ClientCert(t, "press-1")))
	if err != nil {
		t.Fatalf("MQTTS: %v", err)
	}
	pc := paho.NewClient(paho.ClientConfig{Conn: conn, PingHandler: quietPinger{}}) // over TLS: see quietPinger
	ca1, err := pc.Connect(ctx(t, 10*time.Second), &paho.Connect{ClientID: "press-1", CleanStart: true, KeepAlive: 30})
	if err != nil || ca1.ReasonCode != 0 {
		t.Fatalf("MQTTS connect with a device certificate: %v %+v", err, ca1)
	}
	pub := func(machine string) byte {
		pr, err := pc.Publish(ctx(t, 10*time.Second), &paho.Publish{Topic: "twinline/lyon/a/" + machine + "/telemetry", QoS: 1, Payload: []byte(`{"temp":2}`)})
		if err != nil && pr == nil {
			t.Fatalf("publish: %v", err)
		}
		return pr.ReasonCode
	}
	if rc := pub("press-1"); rc != 0 {
		t.Errorf("MQTTS publish for its machine: reason %#x", rc)
	}
	if rc := pub("press-2"); rc != 0x87 {
		t.Errorf("MQTTS publish for another machine: reason %#x, want 0x87", rc)
	}
	pc.Disconnect(&paho.Disconnect{})

	// Rotation: new files, no restart.
	newCert, newKey := ca.IssueServer(t)
	for f, b := range map[string][]byte{certFile + ".new": newCert, keyFile + ".new": newKey} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Rename(keyFile+".new", keyFile); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(certFile+".new", certFile); err != nil {
		t.Fatal(err)
	}
	took := eventually(t, 5*time.Second, "the new certificate is served", func() bool {
		return !bytes.Equal(serverCert(t, s.url, ca), first)
	})
	t.Logf("certificate rotated without restart after %s", took)
}

// serverCert returns the leaf certificate the server at url presents.
func serverCert(t *testing.T, url string, ca *tlstest.CA) []byte {
	t.Helper()
	conn, err := tls.Dial("tcp", strings.TrimPrefix(url, "https://"), ca.ClientConfig())
	if err != nil {
		t.Fatalf("TLS handshake: %v", err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].Raw
}
