package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"

	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/ingest"
	"github.com/twinline/twinline/internal/telemetry"
)

// ErrNoMachine reports a client certificate that names no machine: its
// common name is empty and it has not exactly one DNS name, or the name is
// not a valid machine id.
var ErrNoMachine = errors.New("client certificate names no machine")

// DeviceIdentity returns the identity of a device that presented cert, a
// client certificate already verified against the client CA. The machine it
// may write for is the certificate's subject common name or, when that is
// empty, its only DNS name; the identity may ingest for that machine and do
// nothing else.
func DeviceIdentity(cert *x509.Certificate) (auth.Identity, error) {
	if cert == nil {
		return auth.Identity{}, fmt.Errorf("reading client certificate: %w", ErrNoMachine)
	}
	machine := cert.Subject.CommonName
	if machine == "" {
		if len(cert.DNSNames) != 1 {
			return auth.Identity{}, fmt.Errorf("reading client certificate: empty common name and %d DNS names: %w", len(cert.DNSNames), ErrNoMachine)
		}
		machine = cert.DNSNames[0]
	}
	if p := ingest.MachineIDProblem(machine, telemetry.DefaultLimits().MaxMachineIDLen); p != "" {
		return auth.Identity{}, fmt.Errorf("reading client certificate: machine id %q %s: %w", machine, p, ErrNoMachine)
	}
	return auth.Identity{
		Name:    "cert:" + machine,
		Kind:    auth.KindCertificate,
		Scopes:  auth.ScopeIngest,
		Machine: machine,
	}, nil
}

// FromConnectionState returns the device identity of a TLS connection whose
// client certificate was verified (a server config with a client CA), and
// false when there is none or it names no machine; the connection then
// authenticates some other way (a token).
func FromConnectionState(cs *tls.ConnectionState) (auth.Identity, bool) {
	if cs == nil || len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return auth.Identity{}, false
	}
	id, err := DeviceIdentity(cs.VerifiedChains[0][0])
	if err != nil {
		return auth.Identity{}, false
	}
	return id, true
}

// FromRequest is FromConnectionState of the request's connection.
func FromRequest(r *http.Request) (auth.Identity, bool) {
	return FromConnectionState(r.TLS)
}
