package tlsconf

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/twinline/twinline/internal/tlsconf/tlstest"
)

// serve runs an HTTPS server with cfg on loopback until the end of t and
// returns its address. The handler answers the name of the request's device
// identity and the protocol, or "none".
func serve(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		TLSConfig: cfg,
		ErrorLog:  slog.NewLogLogger(slog.DiscardHandler, slog.LevelError),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			id, ok := FromRequest(r)
			if !ok {
				io.WriteString(w, "none "+r.Proto)
				return
			}
			io.WriteString(w, id.Name+" "+r.Proto)
		}),
	}
	done := make(chan error, 1)
	go func() { done <- srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("ServeTLS: %v", err)
		}
	})
	return ln.Addr().String()
}

// dial completes a handshake with addr and returns the connection state.
func dial(addr string, cfg *tls.Config) (tls.ConnectionState, error) {
	conn, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer conn.Close()
	return conn.ConnectionState(), nil
}

// peerSerial completes a handshake with addr and returns the serial number
// of the server's certificate.
func peerSerial(t *testing.T, addr string, cfg *tls.Config) *big.Int {
	t.Helper()
	cs, err := dial(addr, cfg)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	return cs.PeerCertificates[0].SerialNumber
}

// get fetches https://addr/ with a client of cfg and returns the body.
func get(addr string, cfg *tls.Config) (string, error) {
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}}
	defer c.CloseIdleConnections()
	resp, err := c.Get("https://" + addr + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// fileSerial returns the serial number of the PEM certificate in file.
func fileSerial(t *testing.T, file string) *big.Int {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("no PEM in %s", file)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber
}

func writeFile(t *testing.T, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(name, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestNewErrors(t *testing.T) {
	ca := tlstest.NewCA(t)
	dir := t.TempDir()
	certFile, keyFile := ca.WriteServerFiles(t, dir)
	caFile := ca.WriteCAFile(t, dir)
	garbage := filepath.Join(dir, "garbage")
	writeFile(t, garbage, []byte("not a PEM file\n"))
	_, otherKey := ca.IssueServer(t)
	otherKeyFile := filepath.Join(dir, "other.key")
	writeFile(t, otherKeyFile, otherKey)
	missing := filepath.Join(dir, "missing")

	tests := []struct {
		name                string
		cert, key, clientCA string
		want                string // in the error
		notExist            bool
	}{
		{name: "no files", want: "both a certificate and a key file"},
		{name: "no key", cert: certFile, want: "both a certificate and a key file"},
		{name: "missing cert", cert: missing, key: keyFile, want: "reading tls certificate", notExist: true},
		{name: "missing key", cert: certFile, key: missing, want: "reading tls key", notExist: true},
		{name: "garbage cert", cert: garbage, key: keyFile, want: "loading tls key pair " + garbage},
		{name: "garbage key", cert: certFile, key: garbage, want: "loading tls key pair"},
		{name: "key of another certificate", cert: certFile, key: otherKeyFile, want: "private key does not match"},
		{name: "missing client CA", cert: certFile, key: keyFile, clientCA: missing, want: "loading tls client CA", notExist: true},
		{name: "garbage client CA", cert: certFile, key: keyFile, clientCA: garbage, want: "no PEM certificate in " + garbage},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := New(tt.cert, tt.key, tt.clientCA, nil)
			if err == nil {
				t.Fatalf("New = %v, want an error", r)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
			if got := errors.Is(err, fs.ErrNotExist); got != tt.notExist {
				t.Errorf("errors.Is(%v, fs.ErrNotExist) = %v, want %v", err, got, tt.notExist)
			}
		})
	}

	if _, err := New(certFile, keyFile, caFile, nil); err != nil {
		t.Errorf("New with good files: %v", err)
	}
}

func TestServerConfig(t *testing.T) {
	ca := tlstest.NewCA(t)
	dir := t.TempDir()
	certFile, keyFile := ca.WriteServerFiles(t, dir)
	r, err := New(certFile, keyFile, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := r.ServerConfig()
	if cfg.MinVersion != tls.VersionTLS12 {
		t.Errorf("MinVersion = %x, want TLS 1.2", cfg.MinVersion)
	}
	if cfg.ClientAuth != tls.NoClientCert || cfg.ClientCAs != nil {
		t.Errorf("ClientAuth, ClientCAs = %v, %v without a client CA, want none", cfg.ClientAuth, cfg.ClientCAs)
	}
	addr := serve(t, cfg)

	// HTTP/2 and HTTP/1.1 are both offered.
	if got, err := get(addr, ca.ClientConfig()); err != nil || got != "none HTTP/2.0" {
		t.Errorf("GET = %q, %v; want HTTP/2", got, err)
	}
	if got, err := getHTTP1(addr, ca.ClientConfig()); err != nil || got != "none HTTP/1.1" {
		t.Errorf("GET over HTTP/1.1 = %q, %v; want HTTP/1.1", got, err)
	}

	// TLS 1.1 is refused.
	old := ca.ClientConfig()
	old.MinVersion, old.MaxVersion = tls.VersionTLS11, tls.VersionTLS11
	if _, err := dial(addr, old); err == nil {
		t.Error("TLS 1.1 handshake succeeded, want it refused")
	}
}

// getHTTP1 fetches https://addr/ over HTTP/1.1.
func getHTTP1(addr string, cfg *tls.Config) (string, error) {
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}}
	defer c.CloseIdleConnections()
	resp, err := c.Get("https://" + addr + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func TestListenerConfigALPN(t *testing.T) {
	ca := tlstest.NewCA(t)
	certFile, keyFile := ca.WriteServerFiles(t, t.TempDir())
	r, err := New(certFile, keyFile, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	// An MQTT client offering ALPN "mqtt" connects to a listener with
	// ListenerConfig; ServerConfig, which speaks only HTTP, refuses it.
	for _, tt := range []struct {
		name   string
		cfg    *tls.Config
		wantOK bool
	}{
		{"ListenerConfig", r.ListenerConfig(), true},
		{"ServerConfig", r.ServerConfig(), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ln, err := tls.Listen("tcp", "127.0.0.1:0", tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					_ = c.(*tls.Conn).Handshake()
					c.Close()
				}
			}()
			c := ca.ClientConfig()
			c.NextProtos = []string{"mqtt"}
			_, err = dial(ln.Addr().String(), c)
			if got := err == nil; got != tt.wantOK {
				t.Errorf("handshake with ALPN mqtt: err = %v, want success %v", err, tt.wantOK)
			}
		})
	}
}

func TestReload(t *testing.T) {
	ca := tlstest.NewCA(t)
	dir := t.TempDir()
	certFile, keyFile := ca.WriteServerFiles(t, dir)
	reg := prometheus.NewPedanticRegistry()
	r, err := New(certFile, keyFile, "", nil, WithRegisterer(reg))
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, r.ServerConfig())
	client := ca.ClientConfig()

	first := fileSerial(t, certFile)
	if got := peerSerial(t, addr, client); got.Cmp(first) != 0 {
		t.Fatalf("served serial %v, want %v", got, first)
	}
	checkExpiry(t, r)

	// A new certificate is served after Reload.
	ca.WriteServerFiles(t, dir)
	second := fileSerial(t, certFile)
	if err := r.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if got := peerSerial(t, addr, client); got.Cmp(second) != 0 {
		t.Fatalf("served serial %v after Reload, want the new %v", got, second)
	}
	if got := r.Certificate().Leaf.SerialNumber; got.Cmp(second) != 0 {
		t.Errorf("Certificate().Leaf.SerialNumber = %v, want %v", got, second)
	}
	checkExpiry(t, r)

	// A broken file keeps the certificate in use.
	writeFile(t, certFile, []byte("-----BEGIN CERTIFICATE-----\ntruncated"))
	if err := r.Reload(); err == nil {
		t.Fatal("Reload of a broken certificate succeeded")
	}
	if got := peerSerial(t, addr, client); got.Cmp(second) != 0 {
		t.Errorf("served serial %v after a failed Reload, want the previous %v", got, second)
	}
	if got := testutil.ToFloat64(r.reloadErrors); got != 1 {
		t.Errorf("twinline_tls_reload_errors_total = %v, want 1", got)
	}
	if n, err := testutil.GatherAndCount(reg, "twinline_tls_reload_errors_total", "twinline_tls_certificate_expiry_seconds"); err != nil || n != 2 {
		t.Errorf("gathered %d series, %v; want 2", n, err)
	}
}

func checkExpiry(t *testing.T, r *Reloader) {
	t.Helper()
	if got, want := testutil.ToFloat64(r.expiry), float64(r.Certificate().Leaf.NotAfter.Unix()); got != want {
		t.Errorf("twinline_tls_certificate_expiry_seconds = %v, want %v", got, want)
	}
}

// pipeHandshake completes a handshake over net.Pipe, which a synctest
// bubble can wait on, and returns the serial number of the server's
// certificate.
func pipeHandshake(t *testing.T, srvCfg, cliCfg *tls.Config) *big.Int {
	t.Helper()
	sc, cc := net.Pipe()
	defer sc.Close()
	defer cc.Close()
	done := make(chan error, 1)
	go func() { done <- tls.Server(sc, srvCfg).Handshake() }()
	cli := tls.Client(cc, cliCfg)
	if err := cli.Handshake(); err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("server handshake: %v", err)
	}
	return cli.ConnectionState().PeerCertificates[0].SerialNumber
}

func TestRunReloadsChangedFiles(t *testing.T) {
	ca := tlstest.NewCA(t)
	dir := t.TempDir()
	certFile, keyFile := ca.WriteServerFiles(t, dir)
	// Certificates are made outside the bubble, with the real time; the
	// client checks them at that time, not at the bubble's.
	now := time.Now()
	client := ca.ClientConfig()
	client.ServerName = "localhost"
	client.Time = func() time.Time { return now }
	nextCert, nextKey := ca.IssueServer(t)
	mtime := now

	// replace writes the files, with a modification time of their own so
	// that a file system of coarse timestamps sees the change too.
	replace := func(t *testing.T, certPEM, keyPEM []byte) {
		mtime = mtime.Add(time.Minute)
		for name, data := range map[string][]byte{certFile: certPEM, keyFile: keyPEM} {
			writeFile(t, name, data)
			if err := os.Chtimes(name, mtime, mtime); err != nil {
				t.Fatal(err)
			}
		}
	}

	synctest.Test(t, func(t *testing.T) {
		r, err := New(certFile, keyFile, "", nil, WithPollInterval(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		srv := r.ServerConfig()
		srv.SessionTicketsDisabled = true // nothing reads them from the pipe
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx) }()

		first := fileSerial(t, certFile)
		if got := pipeHandshake(t, srv, client); got.Cmp(first) != 0 {
			t.Fatalf("served serial %v, want %v", got, first)
		}

		// Nothing changed: a poll keeps the certificate.
		time.Sleep(time.Second)
		synctest.Wait()
		if got := pipeHandshake(t, srv, client); got.Cmp(first) != 0 {
			t.Fatalf("served serial %v after an idle poll, want %v", got, first)
		}

		// New files are served after the next poll.
		replace(t, nextCert, nextKey)
		second := fileSerial(t, certFile)
		time.Sleep(time.Second)
		synctest.Wait()
		if got := pipeHandshake(t, srv, client); got.Cmp(second) != 0 {
			t.Fatalf("served serial %v a poll after the files changed, want the new %v", got, second)
		}

		// A broken key keeps the certificate, and is tried once.
		replace(t, nextCert, []byte("garbage"))
		time.Sleep(3 * time.Second)
		synctest.Wait()
		if got := pipeHandshake(t, srv, client); got.Cmp(second) != 0 {
			t.Errorf("served serial %v after a broken key, want the previous %v", got, second)
		}
		if got := testutil.ToFloat64(r.reloadErrors); got != 1 {
			t.Errorf("twinline_tls_reload_errors_total = %v after three polls of one broken change, want 1", got)
		}

		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
	})
}

func TestMutualTLS(t *testing.T) {
	ca := tlstest.NewCA(t)
	other := tlstest.NewCA(t)
	dir := t.TempDir()
	certFile, keyFile := ca.WriteServerFiles(t, dir)
	caFile := ca.WriteCAFile(t, dir)
	r, err := New(certFile, keyFile, caFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := r.ServerConfig()
	if cfg.ClientAuth != tls.VerifyClientCertIfGiven || cfg.ClientCAs == nil {
		t.Fatalf("ClientAuth, ClientCAs = %v, %v; want VerifyClientCertIfGiven and the CA", cfg.ClientAuth, cfg.ClientCAs)
	}
	addr := serve(t, cfg)

	tests := []struct {
		name    string
		certs   []tls.Certificate
		want    string
		wantErr bool
	}{
		{name: "no certificate", want: "none HTTP/2.0"},
		{name: "device", certs: []tls.Certificate{ca.ClientCert(t, "press-07")}, want: "cert:press-07 HTTP/2.0"},
		{name: "device by DNS name", certs: []tls.Certificate{ca.ClientCert(t, "", "press-08")}, want: "cert:press-08 HTTP/2.0"},
		{name: "no machine named", certs: []tls.Certificate{ca.ClientCert(t, "", "a", "b")}, want: "none HTTP/2.0"},
		{name: "another CA", certs: []tls.Certificate{other.ClientCert(t, "press-07")}, wantErr: true},
		{name: "server certificate as client", certs: []tls.Certificate{ca.ServerCert(t)}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := get(addr, ca.ClientConfig(tt.certs...))
			if tt.wantErr {
				if err == nil {
					t.Errorf("GET = %q, want a handshake error", got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("GET = %q, %v; want %q", got, err, tt.want)
			}
		})
	}

	// A reloaded client CA verifies the next handshakes.
	writeFile(t, caFile, other.CertPEM())
	if err := r.Reload(); err != nil {
		t.Fatal(err)
	}
	if got, err := get(addr, ca.ClientConfig(other.ClientCert(t, "press-09"))); err != nil || got != "cert:press-09 HTTP/2.0" {
		t.Errorf("GET with a certificate of the new CA = %q, %v", got, err)
	}
	if got, err := get(addr, ca.ClientConfig(ca.ClientCert(t, "press-07"))); err == nil {
		t.Errorf("GET with a certificate of the old CA = %q, want a handshake error", got)
	}
}

func TestClientConfig(t *testing.T) {
	ca := tlstest.NewCA(t)
	dir := t.TempDir()
	certFile, keyFile := ca.WriteServerFiles(t, dir)
	r, err := New(certFile, keyFile, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, r.ServerConfig())

	sys, err := ClientConfig("")
	if err != nil {
		t.Fatal(err)
	}
	if sys.RootCAs != nil || sys.MinVersion != tls.VersionTLS12 {
		t.Errorf("ClientConfig(\"\") = RootCAs %v, MinVersion %x; want system roots, TLS 1.2", sys.RootCAs, sys.MinVersion)
	}
	if _, err := dial(addr, sys); err == nil {
		t.Error("system roots verified the test CA's server")
	}

	cfg, err := ClientConfig(ca.WriteCAFile(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dial(addr, cfg); err != nil {
		t.Errorf("handshake with the CA file's roots: %v", err)
	}

	if _, err := ClientConfig(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ClientConfig(missing) = %v, want fs.ErrNotExist", err)
	}
}
