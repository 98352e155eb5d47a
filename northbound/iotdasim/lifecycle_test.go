package iotdasim

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/subgate/subgate/northbound/iotda"
)

func TestConfigValidate(t *testing.T) {
	for name, cfg := range map[string]Config{
		"no listen":    {Devices: map[string]string{gw1: "s"}},
		"no devices":   {Listen: "127.0.0.1:0"},
		"bad id":       {Listen: "127.0.0.1:0", Devices: map[string]string{"a b": "s"}},
		"empty secret": {Listen: "127.0.0.1:0", Devices: map[string]string{gw1: ""}},
		"tls no cert":  {Listen: "127.0.0.1:0", Devices: map[string]string{gw1: "s"}, TLSListen: "127.0.0.1:0"},
		"ca no tls":    {Listen: "127.0.0.1:0", Devices: map[string]string{gw1: "s"}, ClientCAFile: "x"},
	} {
		if _, err := New(cfg); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: %v", name, err)
		}
	}
	gw, secret := DevDefaults()
	cfg := DevConfig()
	if gw != "subgate-dev-gw" || secret != "subgate-dev-secret" || cfg.Devices[gw] != secret || !cfg.AutoAcceptAdds {
		t.Fatalf("dev defaults %q %q %+v", gw, secret, cfg)
	}
}

func TestCloseAndRestart(t *testing.T) {
	base := runtime.NumGoroutine()
	s, err := New(Config{Listen: "127.0.0.1:0", Devices: map[string]string{gw1: secret1}, HTTPListen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SendEvent(gw1, "", "$ota", "version_query", nil); !errors.Is(err, ErrNotStarted) {
		t.Fatalf("before start: %v", err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	addr := s.Addr()
	d, err := dial(t, addr, gw1, secret1, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, s, "connected", func(v *View) bool { return v.Connected(gw1) })
	// A pending command fails with ErrClosed when the simulator closes.
	res := call(t, func() (iotda.CommandResponse, error) { return s.Command(ctxT(t), gw1, "", "s", "c", nil) })
	d.recv()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := await(t, res); !errors.Is(err, ErrClosed) {
		t.Fatalf("pending command: %v", err)
	}
	d.waitLost()
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := s.Start(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Start after Close: %v", err)
	}
	if err := s.WaitFor(ctxT(t), func(*View) bool { return false }); !errors.Is(err, ErrClosed) {
		t.Fatalf("WaitFor after Close: %v", err)
	}

	// A new simulator binds the same address again.
	s2, err := New(Config{Listen: addr, Devices: map[string]string{gw1: secret1}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.Start(); err != nil {
		t.Fatal(err)
	}
	if s2.Addr() != addr {
		t.Fatalf("addr %s, want %s", s2.Addr(), addr)
	}
	if _, err := dial(t, addr, gw1, secret1, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, s2, "reconnected", func(v *View) bool { return v.Connected(gw1) })
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}

	checkGoroutines(t, base)
}

// checkGoroutines waits until at most base goroutines (plus a little
// slack) are left: every goroutine the simulator started has ended.
// mochi's per-client write loops end right after their connection; allow
// them to finish.
func checkGoroutines(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(waitTime)
	for runtime.NumGoroutine() > base+2 { // paho's own goroutines may linger briefly
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines: %d, base %d\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		runtime.Gosched()
		time.Sleep(time.Millisecond)
	}
}

// writePEM writes a certificate or key in PEM form.
func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

type certKey struct {
	cert *x509.Certificate
	der  []byte
	key  *ecdsa.PrivateKey
}

func newCert(t *testing.T, cn string, parent *certKey, isCA bool, ext x509.ExtKeyUsage) certKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		IsCA:                  isCA,
		DNSNames:              []string{"localhost"},
		IPAddresses:           nil,
		BasicConstraintsValid: true,
	}
	if !isCA {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{ext}
	}
	signer, signKey := tmpl, key
	if parent != nil {
		signer, signKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return certKey{cert: cert, der: der, key: key}
}

func TestTLSAndX509Login(t *testing.T) {
	dir := t.TempDir()
	ca := newCert(t, "test-ca", nil, true, 0)
	server := newCert(t, "localhost", &ca, false, x509.ExtKeyUsageServerAuth)
	writePEM(t, filepath.Join(dir, "ca.pem"), "CERTIFICATE", ca.der)
	writePEM(t, filepath.Join(dir, "server.pem"), "CERTIFICATE", server.der)
	keyDER, err := x509.MarshalECPrivateKey(server.key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, "server.key"), "EC PRIVATE KEY", keyDER)

	s := newSim(t, func(c *Config) {
		c.TLSListen = "127.0.0.1:0"
		c.TLSCert = filepath.Join(dir, "server.pem")
		c.TLSKey = filepath.Join(dir, "server.key")
		c.ClientCAFile = filepath.Join(dir, "ca.pem")
	})
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	clientTLS := func(cn string) *tls.Config {
		cfg := &tls.Config{RootCAs: roots, ServerName: "localhost", MinVersion: tls.VersionTLS12}
		if cn != "" {
			c := newCert(t, cn, &ca, false, x509.ExtKeyUsageClientAuth)
			cfg.Certificates = []tls.Certificate{{Certificate: [][]byte{c.der}, PrivateKey: c.key}}
		}
		return cfg
	}
	noPassword := func(gw string) connectPkt {
		p := goodConnect(gw, "")
		p.password = ""
		return p
	}
	// Certificate login: CN is the device id, no password.
	if got := rawConnectTLS(t, s.TLSAddr(), clientTLS(gw1), noPassword(gw1)); got != 0 {
		t.Fatalf("cert login: 0x%02x %q", got, s.Errors())
	}
	// A certificate for another device.
	if got := rawConnectTLS(t, s.TLSAddr(), clientTLS(gw2), noPassword(gw1)); got != 0x04 {
		t.Fatalf("wrong CN: 0x%02x", got)
	}
	// No certificate: secret login over TLS.
	if got := rawConnectTLS(t, s.TLSAddr(), clientTLS(""), goodConnect(gw1, secret1)); got != 0 {
		t.Fatalf("secret over TLS: 0x%02x", got)
	}
	if got := rawConnectTLS(t, s.TLSAddr(), clientTLS(""), noPassword(gw1)); got != 0x04 {
		t.Fatalf("no cert, no password: 0x%02x", got)
	}
}
