// Package tlstest is a throwaway certificate authority for tests: it issues
// ECDSA P-256 server and client certificates, writes them to files for the
// flags that take files (--tls-cert, --tls-client-ca, --kafka-tls-ca), and
// hands out the matching crypto/tls values, so that the HTTPS, MQTTS, Kafka
// and end-to-end tests share one implementation.
//
// Certificates are valid from an hour ago for a day. Every function fails the
// test on error instead of returning it.
package tlstest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// CA is a test certificate authority.
type CA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
}

// NewCA returns a new self-signed CA, "twinline test CA".
func NewCA(t testing.TB) *CA {
	t.Helper()
	key := newKey(t)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: "twinline test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("creating CA certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("parsing CA certificate: %v", err)
	}
	return &CA{cert: cert, key: key, certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// Issue returns a certificate signed by the CA and its private key, both
// PEM-encoded. cn is the subject's common name (may be empty); dnsNames and
// ipAddrs are its subject alternative names. A client certificate is for
// client authentication (a device), any other for server authentication.
func (ca *CA) Issue(t testing.TB, cn string, dnsNames []string, ipAddrs []net.IP, client bool) (certPEM, keyPEM []byte) {
	t.Helper()
	key := newKey(t)
	usage := x509.ExtKeyUsageServerAuth
	if client {
		usage = x509.ExtKeyUsageClientAuth
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(t),
		Subject:      pkix.Name{CommonName: cn},
		DNSNames:     dnsNames,
		IPAddresses:  ipAddrs,
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatalf("issuing certificate for %q: %v", cn, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("encoding private key: %v", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}

// IssueServer returns a server certificate and key (PEM) for localhost,
// 127.0.0.1 and ::1: what a test server listening on loopback presents.
func (ca *CA) IssueServer(t testing.TB) (certPEM, keyPEM []byte) {
	t.Helper()
	return ca.Issue(t, "localhost", []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, false)
}

// WriteServerFiles writes a new server certificate for loopback (see
// IssueServer) and its key to dir, as server.crt and server.key, the files
// --tls-cert and --tls-key name.
func (ca *CA) WriteServerFiles(t testing.TB, dir string) (certFile, keyFile string) {
	t.Helper()
	certPEM, keyPEM := ca.IssueServer(t)
	certFile = filepath.Join(dir, "server.crt")
	keyFile = filepath.Join(dir, "server.key")
	writeFile(t, certFile, certPEM)
	writeFile(t, keyFile, keyPEM)
	return certFile, keyFile
}

// WriteCAFile writes the CA certificate to dir as ca.crt, the file
// --tls-client-ca and --kafka-tls-ca name, and returns its path.
func (ca *CA) WriteCAFile(t testing.TB, dir string) string {
	t.Helper()
	name := filepath.Join(dir, "ca.crt")
	writeFile(t, name, ca.certPEM)
	return name
}

// Pool returns a pool holding the CA certificate: a client's RootCAs or a
// server's ClientCAs.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// CertPEM returns the CA certificate, PEM-encoded.
func (ca *CA) CertPEM() []byte { return append([]byte(nil), ca.certPEM...) }

// Cert returns the CA certificate.
func (ca *CA) Cert() *x509.Certificate { return ca.cert }

// ClientCert returns a client (device) certificate with common name cn and
// DNS names dnsNames, ready for tls.Config.Certificates.
func (ca *CA) ClientCert(t testing.TB, cn string, dnsNames ...string) tls.Certificate {
	t.Helper()
	certPEM, keyPEM := ca.Issue(t, cn, dnsNames, nil, true)
	return keyPair(t, certPEM, keyPEM)
}

// ServerCert returns a server certificate for loopback (see IssueServer),
// ready for tls.Config.Certificates.
func (ca *CA) ServerCert(t testing.TB) tls.Certificate {
	t.Helper()
	certPEM, keyPEM := ca.IssueServer(t)
	return keyPair(t, certPEM, keyPEM)
}

// ClientConfig returns a client config that trusts the CA and presents
// certs (none: no client certificate).
func (ca *CA) ClientConfig(certs ...tls.Certificate) *tls.Config {
	return &tls.Config{RootCAs: ca.Pool(), Certificates: certs, MinVersion: tls.VersionTLS12}
}

func keyPair(t testing.TB, certPEM, keyPEM []byte) tls.Certificate {
	t.Helper()
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatalf("loading key pair: %v", err)
	}
	return c
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("generating key: %v", err)
	}
	return key
}

func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatalf("generating serial number: %v", err)
	}
	return n
}

func writeFile(t testing.TB, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(name, data, 0o600); err != nil {
		t.Fatalf("writing %s: %v", name, err)
	}
}
