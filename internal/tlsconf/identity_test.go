package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/tlsconf/tlstest"
)

func TestDeviceIdentity(t *testing.T) {
	device := func(machine string) auth.Identity {
		return auth.Identity{Name: "cert:" + machine, Kind: auth.KindCertificate, Scopes: auth.ScopeIngest, Machine: machine}
	}
	tests := []struct {
		name     string
		cn       string
		dnsNames []string
		want     auth.Identity
		wantErr  bool
	}{
		{name: "common name", cn: "press-07", want: device("press-07")},
		{name: "common name before DNS names", cn: "press-07", dnsNames: []string{"a", "b"}, want: device("press-07")},
		{name: "single DNS name", dnsNames: []string{"press-08.plant.example"}, want: device("press-08.plant.example")},
		{name: "no name", wantErr: true},
		{name: "two DNS names", dnsNames: []string{"a", "b"}, wantErr: true},
		{name: "invalid machine id", cn: "press/07", wantErr: true},
		{name: "white space", cn: "press 07", wantErr: true},
		{name: "too long", cn: strings.Repeat("x", 129), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cert := &x509.Certificate{Subject: pkix.Name{CommonName: tt.cn}, DNSNames: tt.dnsNames}
			got, err := DeviceIdentity(cert)
			if tt.wantErr {
				if !errors.Is(err, ErrNoMachine) {
					t.Errorf("DeviceIdentity = %+v, %v; want ErrNoMachine", got, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(got, tt.want); diff != "" {
				t.Errorf("DeviceIdentity (-got +want):\n%s", diff)
			}
			if !got.Can(auth.ScopeIngest) || got.Can(auth.ScopeRead) {
				t.Errorf("scopes %v, want ingest only", got.Scopes)
			}
		})
	}
	if _, err := DeviceIdentity(nil); !errors.Is(err, ErrNoMachine) {
		t.Errorf("DeviceIdentity(nil) error = %v, want ErrNoMachine", err)
	}
}

func TestFromRequest(t *testing.T) {
	ca := tlstest.NewCA(t)
	leaf := ca.ClientCert(t, "press-07").Leaf
	tests := []struct {
		name   string
		state  *tls.ConnectionState
		want   string // identity name
		wantOK bool
	}{
		{name: "plain HTTP"},
		{name: "TLS without a client certificate", state: &tls.ConnectionState{}},
		// A certificate the client presented but nobody verified (no client
		// CA configured) is not believed.
		{name: "unverified certificate", state: &tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}}},
		{name: "verified certificate", state: &tls.ConnectionState{
			PeerCertificates: []*x509.Certificate{leaf},
			VerifiedChains:   [][]*x509.Certificate{{leaf, ca.Cert()}},
		}, want: "cert:press-07", wantOK: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/", nil)
			r.TLS = tt.state
			got, ok := FromRequest(r)
			if ok != tt.wantOK || got.Name != tt.want {
				t.Errorf("FromRequest = %q, %v; want %q, %v", got.Name, ok, tt.want, tt.wantOK)
			}
		})
	}
}
