package southboundtest

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

// certLifetime is how long either side of "now" a test certificate is
// valid: long enough for any test run, short enough to be useless later.
const certLifetime = time.Hour

// CA is a throwaway certificate authority for tests: an ECDSA P-256 key and
// a self-signed CA certificate valid for an hour either side of its
// creation. Its methods fail the test on any error.
type CA struct {
	// Cert is the CA certificate.
	Cert *x509.Certificate
	// CertPEM is Cert in PEM form, as a CA file holds it.
	CertPEM []byte

	key *ecdsa.PrivateKey
}

// NewCA returns a new certificate authority whose subject common name is
// name.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	key := newKey(t)
	tmpl := newTemplate(t, name)
	tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
	tmpl.KeyUsage = x509.KeyUsageCertSign
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("southboundtest: create CA certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("southboundtest: parse CA certificate: %v", err)
	}
	return &CA{Cert: cert, CertPEM: encodePEM("CERTIFICATE", der), key: key}
}

// Issue returns a certificate for the common name cn signed by ca, with its
// private key, both in PEM form and as a tls.Certificate. A server
// certificate is for localhost, 127.0.0.1 and ::1 (and cn as a DNS name); a
// client certificate is for client authentication only.
func (ca *CA) Issue(t testing.TB, cn string, server bool) (certPEM, keyPEM []byte, cert tls.Certificate) {
	t.Helper()
	key := newKey(t)
	tmpl := newTemplate(t, cn)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.DNSNames = []string{"localhost"}
		if cn != "" && cn != "localhost" && net.ParseIP(cn) == nil {
			tmpl.DNSNames = append(tmpl.DNSNames, cn)
		}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatalf("southboundtest: issue certificate for %q: %v", cn, err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatalf("southboundtest: marshal key for %q: %v", cn, err)
	}
	certPEM, keyPEM = encodePEM("CERTIFICATE", der), encodePEM("EC PRIVATE KEY", kder)
	cert, err = tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatalf("southboundtest: key pair for %q: %v", cn, err)
	}
	return certPEM, keyPEM, cert
}

// WriteFiles issues a certificate for cn (see Issue) and writes it to
// dir/name.pem and its key to dir/name.key (mode 0600), returning both
// paths.
func (ca *CA) WriteFiles(t testing.TB, dir, name, cn string, server bool) (certFile, keyFile string) {
	t.Helper()
	certPEM, keyPEM, _ := ca.Issue(t, cn, server)
	return WriteFile(t, dir, name+".pem", certPEM), WriteFile(t, dir, name+".key", keyPEM)
}

// WriteCA writes the CA certificate to dir/name (mode 0600) and returns the
// path.
func (ca *CA) WriteCA(t testing.TB, dir, name string) string {
	t.Helper()
	return WriteFile(t, dir, name, ca.CertPEM)
}

// Pool returns a new certificate pool that holds the CA certificate only.
func (ca *CA) Pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return pool
}

// WriteFile writes b to dir/name with mode 0600 and returns the path.
func WriteFile(t testing.TB, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatalf("southboundtest: %v", err)
	}
	return p
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("southboundtest: generate key: %v", err)
	}
	return key
}

// newTemplate returns a certificate template for the common name cn, valid
// certLifetime either side of now, with a random positive serial number
// below 2^62 so that certificates of one test never share one.
func newTemplate(t testing.TB, cn string) *x509.Certificate {
	t.Helper()
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatalf("southboundtest: serial number: %v", err)
	}
	now := time.Now()
	return &x509.Certificate{
		SerialNumber: serial.Add(serial, big.NewInt(1)),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    now.Add(-certLifetime),
		NotAfter:     now.Add(certLifetime),
	}
}

func encodePEM(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
