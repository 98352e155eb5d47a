package southbound

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/subgate/subgate/southbound/frame"
	"github.com/subgate/subgate/southbound/southboundtest"
)

// testCA is a throwaway certificate authority.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t testing.TB, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a PEM certificate and key for cn, signed by ca.
func (ca *testCA) issue(t testing.TB, cn string, server bool) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// clientTLS returns a client config presenting a certificate for cn from
// issuer (none when issuer is nil) and trusting serverCA.
func clientTLS(t testing.TB, issuer, serverCA *testCA, cn string) *tls.Config {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(serverCA.cert)
	conf := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if issuer != nil {
		certPEM, keyPEM := issuer.issue(t, cn, false)
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		conf.Certificates = []tls.Certificate{cert}
	}
	return conf
}

func writeFile(t testing.TB, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestMTLS(t *testing.T) {
	ca := newTestCA(t, "subgate test CA")
	rogue := newTestCA(t, "rogue CA")
	dir := t.TempDir()
	srvCert, srvKey := ca.issue(t, "gateway", true)
	cfg := Config{
		Codec:        "jsonl",
		Auth:         AuthMTLS,
		TLSListen:    "127.0.0.1:0",
		TLSCertFile:  writeFile(t, dir, "server.pem", srvCert),
		TLSKeyFile:   writeFile(t, dir, "server.key", srvKey),
		ClientCAFile: writeFile(t, dir, "ca.pem", ca.pem),
	}
	hs := startServer(t, cfg, nil, nil)
	if hs.s.Addr() != nil {
		t.Fatalf("plain listener on %v with auth mtls", hs.s.Addr())
	}
	addr := hs.s.TLSAddr().String()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()

	t.Run("good certificate", func(t *testing.T) {
		c := hs.dial(t, southboundtest.Options{Addr: addr, NodeID: "node-m1", TLSConfig: clientTLS(t, ca, ca, "node-m1")})
		w, err := c.Hello(ctx)
		if err != nil || w.DeviceID != "dev-node-m1" {
			t.Fatalf("hello: %+v, %v", w, err)
		}
		in := hs.h.expect(t, "login")
		if err := c.Send(report); err != nil {
			t.Fatal(err)
		}
		if e := hs.h.expect(t, "frame"); e.c != in.c || e.f.Seq != report.Seq {
			t.Fatalf("frame %+v", e.f)
		}
		if err := in.c.Send(frame.Frame{Type: frame.TypeAck, Seq: report.Seq}); err != nil {
			t.Fatal(err)
		}
		if f := recv(t, c); f.Type != frame.TypeAck {
			t.Fatalf("got %v, want ack", f.Type)
		}
		_ = c.Close()
		if e := hs.h.expect(t, "logout"); !errors.Is(e.reason, ErrPeerClosed) {
			t.Fatalf("logout reason %v", e.reason)
		}
	})

	t.Run("node id not the certificate's", func(t *testing.T) {
		c := hs.dial(t, southboundtest.Options{Addr: addr, NodeID: "someone-else", TLSConfig: clientTLS(t, ca, ca, "node-m2")})
		_, err := c.Hello(ctx)
		var fe *frame.Error
		if !errors.As(err, &fe) || fe.Code != frame.CodeAuthFailed {
			t.Fatalf("hello: %v, want auth_failed", err)
		}
		recvEOF(t, c)
	})

	for _, tc := range []struct {
		name   string
		issuer *testCA
	}{{"certificate from another CA", rogue}, {"no certificate", nil}} {
		t.Run(tc.name, func(t *testing.T) {
			before := counter(hs.s.m.rejects[rjAuthFailed])
			o := southboundtest.Options{Addr: addr, Codec: "jsonl", NodeID: "node-m3",
				TLSConfig: clientTLS(t, tc.issuer, ca, "node-m3")}
			// With TLS 1.3 the client may finish its side before the server
			// refuses the certificate: the refusal then shows on first use.
			c, err := southboundtest.Dial(ctx, o)
			if err == nil {
				defer c.Close()
				if _, err = c.Hello(ctx); err == nil {
					t.Fatal("hello succeeded")
				}
			}
			eventually(t, "rejects{auth_failed}", func() bool { return counter(hs.s.m.rejects[rjAuthFailed]) == before+1 })
		})
	}
	hs.h.none(t)
}

func TestTLSShutdown(t *testing.T) {
	ca := newTestCA(t, "subgate test CA")
	dir := t.TempDir()
	srvCert, srvKey := ca.issue(t, "gateway", true)
	cfg := Config{
		Listen:       "127.0.0.1:0",
		Codec:        "binary",
		Auth:         AuthToken,
		TLSListen:    "127.0.0.1:0",
		TLSCertFile:  writeFile(t, dir, "server.pem", srvCert),
		TLSKeyFile:   writeFile(t, dir, "server.key", srvKey),
		ClientCAFile: writeFile(t, dir, "ca.pem", ca.pem),
	}
	hs := startServer(t, cfg, nil, secretMap{})
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	// TLS devices skip the token challenge: the certificate authenticates.
	c := hs.dial(t, southboundtest.Options{Addr: hs.s.TLSAddr().String(), NodeID: "t1",
		TLSConfig: clientTLS(t, ca, ca, "t1")})
	if _, err := c.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	hs.h.expect(t, "login")
	// A TLS device that never completes the handshake must not hold up Run.
	raw, err := net.Dial("tcp", hs.s.TLSAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	eventually(t, "both conns open", func() bool { return hs.s.Count() == 2 })
	hs.stop()
	if e := hs.h.expect(t, "logout"); !errors.Is(e.reason, ErrShutdown) {
		t.Fatalf("logout reason %v", e.reason)
	}
	recvError(t, c, frame.CodeShuttingDown)
	recvEOF(t, c)
	if hs.s.Count() != 0 {
		t.Fatalf("count %d after Run", hs.s.Count())
	}
}
