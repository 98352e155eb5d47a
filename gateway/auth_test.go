package gateway

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/subgate/subgate/northbound/iotda"
	"github.com/subgate/subgate/northbound/iotdasim"
	"github.com/subgate/subgate/southbound/frame"
	"github.com/subgate/subgate/southbound/southboundtest"
)

// logBuffer collects the gateway's JSON log lines; safe for concurrent
// writes.
type logBuffer struct {
	// mu guards buf.
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// lines returns every record logged so far, decoded.
func (b *logBuffer) lines(t testing.TB) []map[string]any {
	t.Helper()
	b.mu.Lock()
	raw := b.buf.String()
	b.mu.Unlock()
	var out []map[string]any
	for l := range strings.Lines(raw) {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

// waitLine waits until a record has msg and every attribute of attrs.
func (b *logBuffer) waitLine(t testing.TB, msg string, attrs map[string]string) map[string]any {
	t.Helper()
	var found map[string]any
	waitFor(t, "log line "+msg+" "+fmtAttrs(attrs), func() bool {
		for _, l := range b.lines(t) {
			if l[slog.MessageKey] != msg {
				continue
			}
			ok := true
			for k, v := range attrs {
				if s, _ := l[k].(string); !strings.Contains(s, v) {
					ok = false
				}
			}
			if ok {
				found = l
				return true
			}
		}
		return false
	})
	return found
}

func fmtAttrs(m map[string]string) string {
	b, _ := json.Marshal(m)
	return string(b)
}

// noSecrets fails the test if any log line contains one of secrets.
func (b *logBuffer) noSecrets(t testing.TB, secrets ...string) {
	t.Helper()
	b.mu.Lock()
	raw := b.buf.String()
	b.mu.Unlock()
	if raw == "" {
		t.Fatal("nothing was logged: the log capture does not work")
	}
	for l := range strings.Lines(raw) {
		for _, s := range secrets {
			if s != "" && strings.Contains(l, s) {
				t.Errorf("log line holds a secret (%.8s...): %s", s, l)
			}
		}
	}
}

// startLogged is startGateway with the gateway's log captured, at debug
// level, as JSON lines.
func startLogged(t *testing.T, sim *iotdasim.Sim, cfg Config) (*harness, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	reg := prometheus.NewRegistry()
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	gw, err := New(cfg, Deps{Logger: logger, Registry: reg, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{t: t, sim: sim, gw: gw, reg: reg, cancel: cancel, done: make(chan error, 1), cfg: cfg}
	go func() { h.done <- gw.Run(ctx) }()
	select {
	case <-gw.Ready():
	case err := <-h.done:
		t.Fatalf("gateway stopped before ready: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("gateway not ready in 10s")
	}
	t.Cleanup(func() { h.stop() })
	h.waitSim("gateway connected and synced", func(v *iotdasim.View) bool {
		return v.Connected(testGW) && len(v.EventsOf(iotda.EventSyncRequest)) > 0
	})
	return h, logs
}

func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// tokenLogin runs the token handshake by hand, so that the test knows the
// proof on the wire, and returns the welcome or the refusal and the proof.
func tokenLogin(t *testing.T, h *harness, node string, secret []byte) (frame.Frame, string, error) {
	t.Helper()
	c := h.dial(frame.NameJSONL, node)
	ch := recv(t, c)
	if ch.Type != frame.TypeChallenge || len(ch.Nonce) == 0 {
		t.Fatalf("first frame %+v, want a challenge", ch)
	}
	proof := frame.Proof(secret, ch.Nonce, node)
	if err := c.Send(frame.Frame{Type: frame.TypeHello, NodeID: node, Proof: proof}); err != nil {
		t.Fatal(err)
	}
	f := recv(t, c)
	switch f.Type {
	case frame.TypeWelcome:
		return f, proof, nil
	case frame.TypeError:
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := c.Recv(ctx); !isClosed(err) {
			t.Fatalf("after the refusal: %v, want the connection closed", err)
		}
		return f, proof, &frame.Error{Code: f.Code, Reason: f.Reason}
	}
	t.Fatalf("answer to the hello: %+v", f)
	return f, proof, nil
}

// TestAuthToken: a device provisioned through the admin backend logs in
// with its proof; a wrong secret and a device without one are refused
// (auth_failed), logged with the reason and counted; neither the secrets
// nor the proofs appear in any log line.
func TestAuthToken(t *testing.T) {
	sim := startSim(t, "127.0.0.1:0")
	cfg := testConfig(t, sim.Addr(), frame.NameJSONL)
	cfg.Southbound.Auth = "token"
	h, logs := startLogged(t, sim, cfg)

	secret := []byte("tok-" + randomHex(t, 16))
	if err := (adminBackend{h.gw}).ProvisionToken(ctxT(t), "meter7", secret); err != nil {
		t.Fatal(err)
	}
	w, goodProof, err := tokenLogin(t, h, "meter7", secret)
	if err != nil {
		t.Fatalf("provisioned device refused: %v", err)
	}
	h.waitSim("meter7 ONLINE", func(v *iotdasim.View) bool { return v.Status(testGW, w.DeviceID) == iotda.StatusOnline })

	wrong := []byte("tok-" + randomHex(t, 16))
	before := metricSeries(t, h, "subgate_southbound_rejects_total", "reason", "auth_failed")
	_, badProof, err := tokenLogin(t, h, "meter7", wrong)
	var fe *frame.Error
	if !errors.As(err, &fe) || fe.Code != frame.CodeAuthFailed {
		t.Fatalf("wrong secret: %v, want auth_failed", err)
	}
	_, unknownProof, err := tokenLogin(t, h, "meter8", wrong)
	if !errors.As(err, &fe) || fe.Code != frame.CodeAuthFailed {
		t.Fatalf("device without a secret: %v, want auth_failed", err)
	}
	waitFor(t, "rejects{auth_failed} += 2", func() bool {
		return metricSeries(t, h, "subgate_southbound_rejects_total", "reason", "auth_failed") == before+2
	})
	logs.waitLine(t, "login refused", map[string]string{"component": "southbound", "device_id": "meter7", "err": "auth_failed"})
	logs.waitLine(t, "login refused", map[string]string{"component": "southbound", "device_id": "meter8", "err": "auth_failed"})

	// The good device is still logged in; the refused attempts did not
	// kick it.
	if _, ok := h.gw.south.Lookup("meter7"); !ok {
		t.Error("meter7 lost its session to failed logins with its node id")
	}
	logs.noSecrets(t, string(secret), hex.EncodeToString(secret), string(wrong), hex.EncodeToString(wrong),
		goodProof, badProof, unknownProof)
}

// TestAuthAllowList: with open auth and an allow list, a listed node id
// logs in and an unlisted one is refused (auth_failed on the wire,
// not_allowed in the log and the metric).
func TestAuthAllowList(t *testing.T) {
	sim := startSim(t, "127.0.0.1:0")
	cfg := testConfig(t, sim.Addr(), frame.NameJSONL)
	cfg.Southbound.Auth = "open"
	cfg.Southbound.AllowList = []string{"listed1"}
	h, logs := startLogged(t, sim, cfg)

	h.login(frame.NameJSONL, "listed1")

	c := h.dial(frame.NameJSONL, "stranger")
	ctx := ctxT(t)
	_, err := c.Hello(ctx)
	var fe *frame.Error
	if !errors.As(err, &fe) || fe.Code != frame.CodeAuthFailed {
		t.Fatalf("unlisted node id: %v, want auth_failed", err)
	}
	waitFor(t, "rejects{not_allowed}", func() bool {
		return metricSeries(t, h, "subgate_southbound_rejects_total", "reason", "not_allowed") == 1
	})
	logs.waitLine(t, "login refused", map[string]string{"component": "southbound", "device_id": "stranger", "err": "not_allowed"})
	sim.View(func(v *iotdasim.View) {
		for _, d := range v.Devices(testGW) {
			if d.NodeID == "stranger" {
				t.Errorf("refused device registered at the platform: %+v", d)
			}
		}
	})
}

// clientTLS is a device's TLS config: a certificate for cn from issuer
// (none when issuer is nil), trusting the gateway's CA.
func clientTLS(t testing.TB, issuer, serverCA *southboundtest.CA, cn string) *tls.Config {
	t.Helper()
	conf := &tls.Config{RootCAs: serverCA.Pool(), MinVersion: tls.VersionTLS12}
	if issuer != nil {
		_, _, cert := issuer.Issue(t, cn, false)
		conf.Certificates = []tls.Certificate{cert}
	}
	return conf
}

// TestAuthMTLS: with auth=mtls only the TLS listener runs; a device whose
// certificate chains to the client CA logs in as its common name, and a
// certificate from another CA, no certificate, or a hello naming another
// node than the certificate are refused, logged and counted.
func TestAuthMTLS(t *testing.T) {
	ca := southboundtest.NewCA(t, "subgate device CA")
	rogue := southboundtest.NewCA(t, "rogue CA")
	dir := t.TempDir()
	srvCert, srvKey, _ := ca.Issue(t, "subgate", true)

	sim := startSim(t, "127.0.0.1:0")
	cfg := testConfig(t, sim.Addr(), frame.NameJSONL)
	sb := &cfg.Southbound
	sb.Auth = "mtls"
	sb.TLSListen = "127.0.0.1:0"
	sb.TLSCertFile = southboundtest.WriteFile(t, dir, "server.pem", srvCert)
	sb.TLSKeyFile = southboundtest.WriteFile(t, dir, "server.key", srvKey)
	sb.ClientCAFile = ca.WriteCA(t, dir, "ca.pem")
	h, logs := startLogged(t, sim, cfg)
	if a := h.gw.SouthboundAddr(); a != nil {
		t.Fatalf("plain listener on %v with auth=mtls", a)
	}
	addr := h.gw.SouthboundTLSAddr().String()
	rejects := func() float64 {
		return metricSeries(t, h, "subgate_southbound_rejects_total", "reason", "auth_failed")
	}
	dial := func(node string, conf *tls.Config) (*southboundtest.Client, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := southboundtest.Dial(ctx, southboundtest.Options{Addr: addr, Codec: frame.NameJSONL, NodeID: node, TLSConfig: conf})
		if err != nil {
			return nil, err
		}
		t.Cleanup(func() { c.Close() })
		return c, nil
	}
	ctx := ctxT(t)

	// A good certificate: the common name is the node id.
	c, err := dial("cert-dev1", clientTLS(t, ca, ca, "cert-dev1"))
	if err != nil {
		t.Fatal(err)
	}
	w, err := c.Hello(ctx)
	if err != nil {
		t.Fatalf("good certificate refused: %v", err)
	}
	h.waitSim("cert-dev1 ONLINE", func(v *iotdasim.View) bool { return v.Status(testGW, w.DeviceID) == iotda.StatusOnline })
	if err := c.Send(frame.Frame{Type: frame.TypeProperties, Seq: 1, Services: services("s", map[string]any{"v": 1})}); err != nil {
		t.Fatal(err)
	}
	recvType(t, c, frame.TypeAck)

	// Refused handshakes: a certificate from another CA, and none. The
	// TLS 1.3 client learns it at its first read.
	for i, conf := range []*tls.Config{clientTLS(t, rogue, ca, "cert-dev2"), clientTLS(t, nil, ca, "")} {
		n := rejects()
		c, err := dial("cert-dev2", conf)
		if err == nil {
			if _, err = c.Hello(ctx); err == nil {
				t.Fatalf("bad certificate %d: logged in", i)
			}
		}
		waitFor(t, "rejects{auth_failed} after a bad certificate", func() bool { return rejects() == n+1 })
	}
	logs.waitLine(t, "login refused", map[string]string{"component": "southbound", "err": "certificate"})

	// A good certificate with a hello for another node id.
	n := rejects()
	c, err = dial("cert-dev3", clientTLS(t, ca, ca, "cert-dev4"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Hello(ctx)
	var fe *frame.Error
	if !errors.As(err, &fe) || fe.Code != frame.CodeAuthFailed {
		t.Fatalf("hello for another node than the certificate: %v, want auth_failed", err)
	}
	waitFor(t, "rejects{auth_failed} after a mismatch", func() bool { return rejects() == n+1 })
	logs.waitLine(t, "login refused", map[string]string{"component": "southbound", "device_id": "cert-dev3", "err": "auth_failed"})

	// No private key material in the log.
	logs.noSecrets(t, string(srvKey), "PRIVATE KEY")
}
