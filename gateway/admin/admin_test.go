package admin_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/subgate/subgate/gateway/admin"
	"github.com/subgate/subgate/subdevice"
)

const testToken = "0123456789abcdef-admin-token"

// fakeBackend is a hand-written Backend over a real subdevice.Registry.
type fakeBackend struct {
	reg *subdevice.Registry

	// mu guards the following fields.
	mu          sync.Mutex
	online      map[string]bool
	tokens      map[string][]byte
	deleted     []string
	kicked      []string
	ready       bool
	readyReason string
	deleteErr   error
	provErr     error
	// deleteBlock, when set, makes DeleteDevice signal deleteEntered and
	// wait for it to be closed or for ctx to end.
	deleteBlock   chan struct{}
	deleteEntered chan struct{}
}

var _ admin.Backend = (*fakeBackend)(nil)

func newFakeBackend() *fakeBackend {
	return &fakeBackend{
		reg: subdevice.NewRegistry(1, []subdevice.Device{
			{NodeID: "node-a", DeviceID: "prod_node-a", ProductID: "prod", Status: subdevice.Online, Remote: "10.0.0.1:5000"},
			{NodeID: "node-b", DeviceID: "prod_node-b", ProductID: "prod", Status: subdevice.Offline},
			{NodeID: "meter-1", DeviceID: "prod_meter-1", ProductID: "prod", Status: subdevice.Inactive},
		}),
		online: map[string]bool{"prod_node-a": true},
		tokens: map[string][]byte{},
		ready:  true,
	}
}

func (f *fakeBackend) Devices(fl subdevice.Filter, offset, limit int) ([]subdevice.Device, int) {
	return f.reg.List(fl, offset, limit)
}

func (f *fakeBackend) Device(id string) (subdevice.Device, bool) {
	if d, ok := f.reg.ByID(id); ok {
		return d, true
	}
	return f.reg.ByNode(id)
}

func (f *fakeBackend) Online(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.online[id]
}

func (f *fakeBackend) DeleteDevice(ctx context.Context, id string) error {
	f.mu.Lock()
	block, entered, err := f.deleteBlock, f.deleteEntered, f.deleteErr
	f.mu.Unlock()
	if block != nil {
		entered <- struct{}{}
		select {
		case <-block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.deleted = append(f.deleted, id)
	f.mu.Unlock()
	f.reg.Delete(id)
	return nil
}

func (f *fakeBackend) Kick(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.online[id] {
		return false
	}
	f.kicked = append(f.kicked, id)
	return true
}

func (f *fakeBackend) ProvisionToken(_ context.Context, node string, secret []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.provErr != nil {
		return f.provErr
	}
	f.tokens[node] = bytes.Clone(secret)
	return nil
}

func (f *fakeBackend) RevokeToken(_ context.Context, node string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.tokens[node]; !ok {
		return fmt.Errorf("fake: node %q: %w", node, admin.ErrNotFound)
	}
	delete(f.tokens, node)
	return nil
}

func (f *fakeBackend) Ready() (bool, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ready, f.readyReason
}

func (f *fakeBackend) Status() any {
	return map[string]any{"northbound": "connected", "devices": f.reg.Len()}
}

func (f *fakeBackend) Config() any {
	return map[string]any{"admin": map[string]string{"listen": "127.0.0.1:9100", "token_file": "<redacted>"}}
}

// env is a server under test with its backend, registry and captured logs.
type env struct {
	t       *testing.T
	srv     *admin.Server
	be      *fakeBackend
	reg     *prometheus.Registry
	h       http.Handler
	token   string
	logsMu  sync.Mutex
	logsBuf bytes.Buffer
}

type lockedWriter struct{ e *env }

func (w lockedWriter) Write(p []byte) (int, error) {
	w.e.logsMu.Lock()
	defer w.e.logsMu.Unlock()
	return w.e.logsBuf.Write(p)
}

func (e *env) logs() string {
	e.logsMu.Lock()
	defer e.logsMu.Unlock()
	return e.logsBuf.String()
}

func newEnv(t *testing.T, o admin.Options) *env {
	t.Helper()
	e := &env{t: t, be: newFakeBackend(), reg: prometheus.NewRegistry(), token: o.Token}
	if o.Listen == "" {
		o.Listen = "127.0.0.1:0"
	}
	o.Registry = e.reg
	o.Logger = slog.New(slog.NewTextHandler(lockedWriter{e}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := admin.New(o, e.be)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	e.srv, e.h = srv, srv.Handler()
	return e
}

type result struct {
	code   int
	header http.Header
	body   []byte
}

func (r result) errBody(t *testing.T) admin.ErrorBody {
	t.Helper()
	var eb admin.ErrorBody
	if err := json.Unmarshal(r.body, &eb); err != nil || eb.Error == "" || eb.Code == "" {
		t.Fatalf("status %d: body is not a JSON error: %q (%v)", r.code, r.body, err)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("error content type %q", ct)
	}
	return eb
}

// do sends a request with the env's token (if any); auth overrides the
// Authorization header when not nil.
func (e *env) do(method, target, body string, auth *string) result {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, target, rd)
	switch {
	case auth != nil:
		if *auth != "" {
			req.Header.Set("Authorization", *auth)
		}
	case e.token != "":
		req.Header.Set("Authorization", "Bearer "+e.token)
	}
	rec := httptest.NewRecorder()
	e.h.ServeHTTP(rec, req)
	return result{code: rec.Code, header: rec.Header(), body: rec.Body.Bytes()}
}

func ptr(s string) *string { return &s }

func decode[T any](t *testing.T, r result) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatalf("status %d: decode %q: %v", r.code, r.body, err)
	}
	return v
}

func TestNewRequiresTokenBeyondLoopback(t *testing.T) {
	be := newFakeBackend()
	for _, addr := range []string{":9100", "0.0.0.0:9100", "[::]:9100", "10.1.2.3:9100", "gateway.example:9100"} {
		_, err := admin.New(admin.Options{Listen: addr}, be)
		if !errors.Is(err, admin.ErrTokenRequired) {
			t.Errorf("listen %q without token: err %v, want ErrTokenRequired", addr, err)
			continue
		}
		if !strings.Contains(err.Error(), "admin.token_file") {
			t.Errorf("error %q does not name admin.token_file", err)
		}
		if _, err := admin.New(admin.Options{Listen: addr, Token: testToken}, be); err != nil {
			t.Errorf("listen %q with token: %v", addr, err)
		}
	}
	for _, addr := range []string{"127.0.0.1:0", "localhost:9100", "[::1]:9100", "127.0.0.2:9100", ""} {
		if _, err := admin.New(admin.Options{Listen: addr}, be); err != nil {
			t.Errorf("loopback %q without token: %v", addr, err)
		}
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	be := newFakeBackend()
	cases := map[string]admin.Options{
		"no port":           {Listen: "127.0.0.1"},
		"short token":       {Token: "short"},
		"negative timeout":  {ReadTimeout: -time.Second},
		"backend >= write":  {BackendTimeout: time.Minute, WriteTimeout: time.Minute},
		"negative body cap": {MaxBodyBytes: -1},
		"negative page cap": {MaxPageLimit: -5},
	}
	for name, o := range cases {
		if _, err := admin.New(o, be); !errors.Is(err, admin.ErrBadOptions) {
			t.Errorf("%s: err %v, want ErrBadOptions", name, err)
		}
	}
	if _, err := admin.New(admin.Options{}, nil); !errors.Is(err, admin.ErrBadOptions) {
		t.Errorf("nil backend: err %v", err)
	}
	// A token file's trailing newline is not part of the token.
	e := newEnv(t, admin.Options{Token: testToken + "\n"})
	if r := e.do("GET", "/api/v1/status", "", ptr("Bearer "+testToken)); r.code != http.StatusOK {
		t.Errorf("trimmed token: status %d", r.code)
	}
}

func TestLoopbackOnly(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:1": true, "localhost:1": true, "LOCALHOST:1": true, "[::1]:1": true,
		":1": false, "0.0.0.0:1": false, "192.168.1.1:1": false, "host:1": false, "garbage": false,
	} {
		if got := admin.LoopbackOnly(addr); got != want {
			t.Errorf("LoopbackOnly(%q) = %v, want %v", addr, got, want)
		}
	}
}

func TestTokenAuth(t *testing.T) {
	e := newEnv(t, admin.Options{Listen: "0.0.0.0:0", Token: testToken})
	guarded := []struct{ method, path string }{
		{"GET", "/metrics"}, {"GET", "/api/v1/status"}, {"GET", "/api/v1/config"},
		{"GET", "/api/v1/devices"}, {"GET", "/api/v1/devices/node-a"}, {"DELETE", "/api/v1/devices/node-a"},
		{"POST", "/api/v1/devices/node-a/kick"}, {"PUT", "/api/v1/tokens/node-a"}, {"DELETE", "/api/v1/tokens/node-a"},
	}
	for _, g := range guarded {
		r := e.do(g.method, g.path, "", ptr(""))
		if r.code != http.StatusUnauthorized {
			t.Errorf("%s %s without token: status %d", g.method, g.path, r.code)
			continue
		}
		if eb := r.errBody(t); eb.Code != admin.CodeUnauthorized {
			t.Errorf("code %q", eb.Code)
		}
		if got := r.header.Get("WWW-Authenticate"); got != `Bearer realm="subgate"` {
			t.Errorf("WWW-Authenticate %q", got)
		}
		for _, bad := range []string{"Bearer wrong-token-0123456789", "Basic " + testToken, testToken, "Bearer " + testToken + "x"} {
			r := e.do(g.method, g.path, "", ptr(bad))
			if r.code != http.StatusUnauthorized {
				t.Errorf("%s %s with %q: status %d", g.method, g.path, bad, r.code)
			}
			if got := r.header.Get("WWW-Authenticate"); !strings.Contains(got, `error="invalid_token"`) {
				t.Errorf("WWW-Authenticate %q lacks invalid_token", got)
			}
		}
	}
	// Nothing was done on the backend's side.
	if len(e.be.deleted) != 0 || len(e.be.kicked) != 0 || len(e.be.tokens) != 0 {
		t.Fatalf("unauthorized requests reached the backend: %+v", e.be)
	}
	for _, ok := range []string{"Bearer " + testToken, "bearer " + testToken, "Bearer  " + testToken + " "} {
		if r := e.do("GET", "/api/v1/status", "", ptr(ok)); r.code != http.StatusOK {
			t.Errorf("Authorization %q: status %d", ok, r.code)
		}
	}
	if r := e.do("GET", "/metrics", "", nil); r.code != http.StatusOK {
		t.Errorf("/metrics with token: status %d", r.code)
	}
	// Probes never need the token.
	for _, p := range []string{"/healthz", "/readyz"} {
		if r := e.do("GET", p, "", ptr("")); r.code != http.StatusOK {
			t.Errorf("%s without token: status %d", p, r.code)
		}
	}
}

func TestLoopbackWithoutTokenIsOpen(t *testing.T) {
	e := newEnv(t, admin.Options{})
	for _, p := range []string{"/api/v1/status", "/api/v1/devices", "/metrics"} {
		if r := e.do("GET", p, "", nil); r.code != http.StatusOK {
			t.Errorf("GET %s: status %d: %s", p, r.code, r.body)
		}
	}
}

func TestHealthz(t *testing.T) {
	e := newEnv(t, admin.Options{})
	r := e.do("GET", "/healthz", "", nil)
	if r.code != http.StatusOK || strings.TrimSpace(string(r.body)) != `{"status":"ok"}` {
		t.Fatalf("healthz: %d %s", r.code, r.body)
	}
	e.srv.SetDraining()
	if r := e.do("GET", "/healthz", "", nil); r.code != http.StatusOK {
		t.Fatalf("healthz while draining: %d", r.code)
	}
}

func TestReadyz(t *testing.T) {
	e := newEnv(t, admin.Options{})
	if r := e.do("GET", "/readyz", "", nil); r.code != http.StatusOK || !decode[admin.Readiness](t, r).Ready {
		t.Fatalf("ready backend: %d %s", r.code, r.body)
	}
	e.be.mu.Lock()
	e.be.ready, e.be.readyReason = false, "northbound down"
	e.be.mu.Unlock()
	r := e.do("GET", "/readyz", "", nil)
	rd := decode[admin.Readiness](t, r)
	if r.code != http.StatusServiceUnavailable || rd.Ready || rd.Reason != "northbound down" {
		t.Fatalf("not ready backend: %d %s", r.code, r.body)
	}
	if eb := r.errBody(t); eb.Code != admin.CodeNotReady {
		t.Errorf("code %q", eb.Code)
	}

	e.be.mu.Lock()
	e.be.ready = true
	e.be.mu.Unlock()
	e.srv.SetDraining()
	r = e.do("GET", "/readyz", "", nil)
	rd = decode[admin.Readiness](t, r)
	if r.code != http.StatusServiceUnavailable || rd.Ready || rd.Reason != "shutting down" {
		t.Fatalf("draining: %d %s", r.code, r.body)
	}
}

func TestListDevices(t *testing.T) {
	e := newEnv(t, admin.Options{Token: testToken})
	r := e.do("GET", "/api/v1/devices", "", nil)
	l := decode[admin.DeviceList](t, r)
	if r.code != http.StatusOK || l.Total != 3 || l.Offset != 0 || l.Limit != admin.DefaultPageLimit || len(l.Devices) != 3 {
		t.Fatalf("list all: %d %s", r.code, r.body)
	}
	if l.Devices[0].DeviceID != "prod_meter-1" || l.Devices[1].DeviceID != "prod_node-a" || !l.Devices[1].Online || l.Devices[0].Online {
		t.Errorf("devices or online flags wrong: %+v", l.Devices)
	}
	if !bytes.Contains(r.body, []byte(`"online":true`)) || !bytes.Contains(r.body, []byte(`"node_id":"node-a"`)) {
		t.Errorf("JSON shape: %s", r.body)
	}

	l = decode[admin.DeviceList](t, e.do("GET", "/api/v1/devices?status=online", "", nil))
	if l.Total != 1 || l.Devices[0].NodeID != "node-a" {
		t.Errorf("status filter: %+v", l)
	}
	l = decode[admin.DeviceList](t, e.do("GET", "/api/v1/devices?prefix=node-", "", nil))
	if l.Total != 2 {
		t.Errorf("prefix filter: %+v", l)
	}
	l = decode[admin.DeviceList](t, e.do("GET", "/api/v1/devices?offset=1&limit=1", "", nil))
	if l.Total != 3 || l.Offset != 1 || l.Limit != 1 || len(l.Devices) != 1 || l.Devices[0].DeviceID != "prod_node-a" {
		t.Errorf("paging: %+v", l)
	}
	r = e.do("GET", "/api/v1/devices?offset=10", "", nil)
	if l = decode[admin.DeviceList](t, r); l.Devices == nil || len(l.Devices) != 0 || !bytes.Contains(r.body, []byte(`"devices":[]`)) {
		t.Errorf("past the end: %s", r.body)
	}
	l = decode[admin.DeviceList](t, e.do("GET", "/api/v1/devices?limit=1000", "", nil))
	if l.Limit != 1000 {
		t.Errorf("max limit: %+v", l)
	}

	for _, q := range []string{"status=BROKEN", "limit=0", "limit=1001", "limit=-1", "limit=x", "offset=-1",
		"offset=1e3", "prefix=" + strings.Repeat("p", admin.MaxPrefixLen+1)} {
		r := e.do("GET", "/api/v1/devices?"+q, "", nil)
		if r.code != http.StatusBadRequest || r.errBody(t).Code != admin.CodeBadRequest {
			t.Errorf("%s: %d %s", q, r.code, r.body)
		}
	}
}

func TestShowDevice(t *testing.T) {
	e := newEnv(t, admin.Options{})
	for _, id := range []string{"prod_node-a", "node-a"} {
		r := e.do("GET", "/api/v1/devices/"+id, "", nil)
		d := decode[admin.DeviceView](t, r)
		if r.code != http.StatusOK || d.DeviceID != "prod_node-a" || !d.Online || d.Remote != "10.0.0.1:5000" {
			t.Errorf("show %s: %d %s", id, r.code, r.body)
		}
	}
	if r := e.do("GET", "/api/v1/devices/nope", "", nil); r.code != http.StatusNotFound || r.errBody(t).Code != admin.CodeNotFound {
		t.Errorf("unknown: %d %s", r.code, r.body)
	}
	for _, id := range []string{"bad%20id", "a.b", strings.Repeat("x", subdevice.MaxDeviceIDLen+1)} {
		if r := e.do("GET", "/api/v1/devices/"+id, "", nil); r.code != http.StatusBadRequest || r.errBody(t).Code != admin.CodeBadRequest {
			t.Errorf("bad id %q: %d %s", id, r.code, r.body)
		}
	}
}

func TestDeleteDevice(t *testing.T) {
	e := newEnv(t, admin.Options{})
	r := e.do("DELETE", "/api/v1/devices/node-b", "", nil)
	if r.code != http.StatusOK || !bytes.Contains(r.body, []byte(`"deleted":true`)) {
		t.Fatalf("delete: %d %s", r.code, r.body)
	}
	if len(e.be.deleted) != 1 || e.be.deleted[0] != "prod_node-b" {
		t.Errorf("backend got %v, want the device id prod_node-b", e.be.deleted)
	}
	if r := e.do("DELETE", "/api/v1/devices/node-b", "", nil); r.code != http.StatusNotFound {
		t.Errorf("delete again: %d", r.code)
	}
	for err, want := range map[error]int{
		fmt.Errorf("x: %w", admin.ErrRejected):    http.StatusBadGateway,
		fmt.Errorf("x: %w", admin.ErrUnavailable): http.StatusServiceUnavailable,
		fmt.Errorf("x: %w", admin.ErrNotFound):    http.StatusNotFound,
		context.DeadlineExceeded:                  http.StatusGatewayTimeout,
		errors.New("disk on fire"):                http.StatusInternalServerError,
	} {
		e.be.mu.Lock()
		e.be.deleteErr = err
		e.be.mu.Unlock()
		r := e.do("DELETE", "/api/v1/devices/node-a", "", nil)
		if r.code != want {
			t.Errorf("backend error %v: status %d, want %d", err, r.code, want)
		}
		eb := r.errBody(t)
		if want == http.StatusInternalServerError && strings.Contains(eb.Error, "disk on fire") {
			t.Errorf("internal error detail leaked to the client: %q", eb.Error)
		}
	}
}

func TestKickDevice(t *testing.T) {
	e := newEnv(t, admin.Options{})
	if r := e.do("POST", "/api/v1/devices/node-a/kick", "", nil); r.code != http.StatusOK {
		t.Fatalf("kick: %d %s", r.code, r.body)
	}
	if len(e.be.kicked) != 1 || e.be.kicked[0] != "prod_node-a" {
		t.Errorf("kicked %v", e.be.kicked)
	}
	if r := e.do("POST", "/api/v1/devices/node-b/kick", "", nil); r.code != http.StatusConflict || r.errBody(t).Code != admin.CodeConflict {
		t.Errorf("kick offline: %d %s", r.code, r.body)
	}
	if r := e.do("POST", "/api/v1/devices/ghost/kick", "", nil); r.code != http.StatusNotFound {
		t.Errorf("kick unknown: %d", r.code)
	}
}

func TestTokens(t *testing.T) {
	e := newEnv(t, admin.Options{MaxBodyBytes: 1024})
	given := "given-secret-0123456789"
	r := e.do("PUT", "/api/v1/tokens/node-a", `{"secret":"`+given+`"}`, nil)
	tr := decode[admin.TokenResult](t, r)
	if r.code != http.StatusOK || tr.NodeID != "node-a" || tr.Generated || tr.Secret != "" {
		t.Fatalf("put given: %d %s", r.code, r.body)
	}
	if bytes.Contains(r.body, []byte(given)) {
		t.Error("a given secret was echoed back")
	}
	if got := string(e.be.tokens["node-a"]); got != given {
		t.Errorf("stored %q", got)
	}

	r = e.do("PUT", "/api/v1/tokens/new-node", "", nil)
	tr = decode[admin.TokenResult](t, r)
	raw, err := hex.DecodeString(tr.Secret)
	if r.code != http.StatusOK || !tr.Generated || err != nil || len(raw) != admin.GeneratedSecretBytes {
		t.Fatalf("put generated: %d %s", r.code, r.body)
	}
	if got := string(e.be.tokens["new-node"]); got != tr.Secret {
		t.Errorf("stored %q, answered %q", got, tr.Secret)
	}
	if cc := r.header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q", cc)
	}
	tr2 := decode[admin.TokenResult](t, e.do("PUT", "/api/v1/tokens/new-node", "  \n", nil))
	if !tr2.Generated || tr2.Secret == tr.Secret {
		t.Errorf("second generation reused a secret or did not generate")
	}

	for name, body := range map[string]string{
		"not json":      "secret=x",
		"unknown field": `{"secret":"given-secret-0123456789","extra":1}`,
		"wrong type":    `{"secret":12345678901234567890}`,
		"trailing":      `{"secret":"given-secret-0123456789"} {}`,
		"short":         `{"secret":"short"}`,
		"long":          `{"secret":"` + strings.Repeat("s", admin.MaxSecretLen+1) + `"}`,
	} {
		r := e.do("PUT", "/api/v1/tokens/node-a", body, nil)
		if r.code != http.StatusBadRequest || r.errBody(t).Code != admin.CodeBadRequest {
			t.Errorf("%s: %d %s", name, r.code, r.body)
		}
	}
	r = e.do("PUT", "/api/v1/tokens/node-a", `{"secret":"`+strings.Repeat("s", 2000)+`"}`, nil)
	if r.code != http.StatusRequestEntityTooLarge || r.errBody(t).Code != admin.CodeTooLarge {
		t.Errorf("too large: %d %s", r.code, r.body)
	}
	if r := e.do("PUT", "/api/v1/tokens/bad.node", "", nil); r.code != http.StatusBadRequest {
		t.Errorf("bad node id: %d", r.code)
	}
	e.be.mu.Lock()
	e.be.provErr = fmt.Errorf("store: %w", admin.ErrUnavailable)
	e.be.mu.Unlock()
	if r := e.do("PUT", "/api/v1/tokens/node-b", "", nil); r.code != http.StatusServiceUnavailable || bytes.Contains(r.body, []byte(`"secret"`)) {
		t.Errorf("provision failure: %d %s", r.code, r.body)
	}

	r = e.do("DELETE", "/api/v1/tokens/node-a", "", nil)
	if tr := decode[admin.TokenResult](t, r); r.code != http.StatusOK || !tr.Revoked {
		t.Errorf("revoke: %d %s", r.code, r.body)
	}
	if r := e.do("DELETE", "/api/v1/tokens/node-a", "", nil); r.code != http.StatusNotFound || r.errBody(t).Code != admin.CodeNotFound {
		t.Errorf("revoke again: %d %s", r.code, r.body)
	}
	if r := e.do("DELETE", "/api/v1/tokens/a%2Fb", "", nil); r.code != http.StatusBadRequest {
		t.Errorf("revoke bad node: %d %s", r.code, r.body)
	}
}

func TestStatusAndConfig(t *testing.T) {
	e := newEnv(t, admin.Options{})
	st := decode[map[string]any](t, e.do("GET", "/api/v1/status", "", nil))
	if st["northbound"] != "connected" || st["devices"] != float64(3) {
		t.Errorf("status %v", st)
	}
	r := e.do("GET", "/api/v1/config", "", nil)
	if r.code != http.StatusOK || !bytes.Contains(r.body, []byte(`"token_file":"<redacted>"`)) {
		t.Errorf("config %d %s", r.code, r.body)
	}
}

type unencodable struct{}

func (unencodable) Status() any { return map[string]any{"f": func() {}} }

func TestUnencodableStatus(t *testing.T) {
	be := &badStatusBackend{newFakeBackend()}
	srv, err := admin.New(admin.Options{}, be)
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	srv.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/api/v1/status", nil))
	r := result{rec.Code, rec.Header(), rec.Body.Bytes()}
	if r.code != http.StatusInternalServerError || r.errBody(t).Code != admin.CodeInternal {
		t.Errorf("unencodable status: %d %s", r.code, r.body)
	}
}

type badStatusBackend struct{ *fakeBackend }

func (b *badStatusBackend) Status() any { return unencodable{}.Status() }

func TestUnknownRoutesAndMethods(t *testing.T) {
	e := newEnv(t, admin.Options{Token: testToken})
	for _, c := range []struct {
		method, path string
		code         int
		errCode      string
	}{
		{"GET", "/nope", 404, admin.CodeNotFound},
		{"GET", "/api/v1/devices/a/b/c", 404, admin.CodeNotFound},
		{"GET", "/debug/pprof/", 404, admin.CodeNotFound}, // pprof is off
		{"POST", "/healthz", 405, admin.CodeMethodNotAllowed},
		{"PUT", "/api/v1/devices/node-a", 405, admin.CodeMethodNotAllowed},
		{"GET", "/api/v1/devices/node-a/kick", 405, admin.CodeMethodNotAllowed},
	} {
		r := e.do(c.method, c.path, "", ptr(""))
		if r.code != c.code || r.errBody(t).Code != c.errCode {
			t.Errorf("%s %s: %d %s", c.method, c.path, r.code, r.body)
		}
		if c.code == 405 && r.header.Get("Allow") == "" {
			t.Errorf("%s %s: 405 without Allow", c.method, c.path)
		}
	}
	if got := counter(t, e.reg, "other", "404"); got != 3 {
		t.Errorf(`requests_total{route="other",code="404"} = %v, want 3`, got)
	}
}

func TestPprofBehindToken(t *testing.T) {
	e := newEnv(t, admin.Options{Token: testToken, Pprof: true})
	if r := e.do("GET", "/debug/pprof/", "", ptr("")); r.code != http.StatusUnauthorized {
		t.Errorf("pprof without token: %d", r.code)
	}
	r := e.do("GET", "/debug/pprof/", "", nil)
	if r.code != http.StatusOK || !bytes.Contains(r.body, []byte("goroutine")) {
		t.Errorf("pprof index: %d", r.code)
	}
	if r := e.do("GET", "/debug/pprof/goroutine?debug=1", "", nil); r.code != http.StatusOK {
		t.Errorf("pprof goroutine: %d", r.code)
	}
}

// counter reads subgate_admin_requests_total{route,code} from reg.
func counter(t *testing.T, reg *prometheus.Registry, route, code string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "subgate_admin_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label(m, "route") == route && label(m, "code") == code {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func TestRequestMetrics(t *testing.T) {
	e := newEnv(t, admin.Options{Token: testToken})
	e.do("GET", "/healthz", "", nil)
	e.do("GET", "/healthz", "", nil)
	e.do("GET", "/api/v1/devices/node-a", "", nil)
	e.do("GET", "/api/v1/devices/node-b", "", nil)
	e.do("GET", "/api/v1/devices/node-a", "", ptr(""))
	for _, c := range []struct {
		route, code string
		want        float64
	}{
		{"GET /healthz", "200", 2},
		{"GET /api/v1/devices/{id}", "200", 2},
		{"GET /api/v1/devices/{id}", "401", 1},
	} {
		if got := counter(t, e.reg, c.route, c.code); got != c.want {
			t.Errorf("requests_total{route=%q,code=%q} = %v, want %v", c.route, c.code, got, c.want)
		}
	}
	r := e.do("GET", "/metrics", "", nil)
	if !bytes.Contains(r.body, []byte(`subgate_admin_requests_total{code="200",route="GET /healthz"} 2`)) {
		t.Errorf("metrics page lacks the admin counter:\n%s", r.body)
	}
}

func TestSecretsNeverLogged(t *testing.T) {
	e := newEnv(t, admin.Options{Token: testToken})
	given := "super-secret-value-42424242"
	e.do("PUT", "/api/v1/tokens/node-a", `{"secret":"`+given+`"}`, nil)
	gen := decode[admin.TokenResult](t, e.do("PUT", "/api/v1/tokens/node-b", "", nil)).Secret
	e.do("PUT", "/api/v1/tokens/node-a", `{"secret":"`+given+`","x":1}`, nil)
	e.do("GET", "/api/v1/status", "", ptr("Bearer "+testToken+"-wrong"))
	e.be.mu.Lock()
	e.be.provErr = errors.New("backend exploded")
	e.be.mu.Unlock()
	e.do("PUT", "/api/v1/tokens/node-c", `{"secret":"`+given+`"}`, nil)

	logs := e.logs()
	if !strings.Contains(logs, "admin request") || !strings.Contains(logs, "backend exploded") {
		t.Fatalf("expected the access log and the backend error in the logs:\n%s", logs)
	}
	for _, secret := range []string{given, gen, testToken} {
		if strings.Contains(logs, secret) {
			t.Errorf("secret %q found in logs:\n%s", secret, logs)
		}
	}
}

func TestInFlightBound(t *testing.T) {
	e := newEnv(t, admin.Options{MaxInFlight: 1})
	e.be.deleteBlock = make(chan struct{})
	e.be.deleteEntered = make(chan struct{}, 1)
	done := make(chan result, 1)
	go func() { done <- e.do("DELETE", "/api/v1/devices/node-a", "", nil) }()
	select {
	case <-e.be.deleteEntered:
	case <-time.After(10 * time.Second):
		t.Fatal("DeleteDevice was not called")
	}
	r := e.do("GET", "/api/v1/status", "", nil)
	if r.code != http.StatusServiceUnavailable || r.errBody(t).Code != admin.CodeBusy {
		t.Errorf("second request: %d %s", r.code, r.body)
	}
	if r := e.do("GET", "/healthz", "", nil); r.code != http.StatusOK {
		t.Errorf("healthz under load: %d", r.code)
	}
	close(e.be.deleteBlock)
	if r := <-done; r.code != http.StatusOK {
		t.Errorf("first request: %d %s", r.code, r.body)
	}
}

func TestBackendTimeout(t *testing.T) {
	e := newEnv(t, admin.Options{BackendTimeout: time.Millisecond})
	e.be.deleteBlock = make(chan struct{}) // never closed: only the deadline ends it
	e.be.deleteEntered = make(chan struct{}, 1)
	r := e.do("DELETE", "/api/v1/devices/node-a", "", nil)
	if r.code != http.StatusGatewayTimeout || r.errBody(t).Code != admin.CodeTimeout {
		t.Errorf("timeout: %d %s", r.code, r.body)
	}
}

func TestServeLifecycle(t *testing.T) {
	e := newEnv(t, admin.Options{Token: testToken})
	if e.srv.Addr() != nil {
		t.Fatal("Addr before Listen")
	}
	if err := e.srv.Listen(); err != nil {
		t.Fatal(err)
	}
	if err := e.srv.Listen(); !errors.Is(err, admin.ErrServing) {
		t.Errorf("second Listen: %v", err)
	}
	base := "http://" + e.srv.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- e.srv.Serve(ctx) }()

	res, err := http.Get(base + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("readyz over TCP: %d", res.StatusCode)
	}
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	if r := e.do("GET", "/readyz", "", nil); r.code != http.StatusServiceUnavailable {
		t.Errorf("readyz after Serve returned: %d", r.code)
	}
	if _, err := http.Get(base + "/healthz"); err == nil {
		t.Error("server still accepts connections after Serve returned")
	}
	if err := e.srv.Serve(context.Background()); !errors.Is(err, admin.ErrServing) {
		t.Errorf("second Serve: %v", err)
	}
}

func TestServeWithoutListenAndListenError(t *testing.T) {
	e := newEnv(t, admin.Options{})
	if err := e.srv.Listen(); err != nil {
		t.Fatal(err)
	}
	// A second server on the same port fails in Serve, at once.
	srv2, err := admin.New(admin.Options{Listen: e.srv.Addr().String()}, e.be)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv2.Serve(context.Background()); err == nil || errors.Is(err, admin.ErrServing) {
		t.Errorf("Serve on a busy port: %v", err)
	}
}

func TestShutdownTimeoutCutsHangingRequests(t *testing.T) {
	e := newEnv(t, admin.Options{ShutdownTimeout: time.Millisecond})
	e.be.deleteBlock = make(chan struct{})
	e.be.deleteEntered = make(chan struct{}, 1)
	if err := e.srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- e.srv.Serve(ctx) }()
	reqDone := make(chan struct{})
	go func() {
		defer close(reqDone)
		req, _ := http.NewRequest("DELETE", "http://"+e.srv.Addr().String()+"/api/v1/devices/node-a", nil)
		if res, err := http.DefaultClient.Do(req); err == nil {
			res.Body.Close()
		}
	}()
	select {
	case <-e.be.deleteEntered:
	case <-time.After(10 * time.Second):
		t.Fatal("request did not reach the backend")
	}
	cancel()
	select {
	case err := <-served:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Serve: %v, want a shutdown deadline error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
	close(e.be.deleteBlock)
	<-reqDone
}

func TestCloseBeforeServe(t *testing.T) {
	e := newEnv(t, admin.Options{})
	if err := e.srv.Listen(); err != nil {
		t.Fatal(err)
	}
	addr := e.srv.Addr().String()
	if err := e.srv.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// The port is free again and Serve refuses to run.
	srv2, err := admin.New(admin.Options{Listen: addr}, e.be)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv2.Listen(); err != nil {
		t.Fatalf("port still bound after Close: %v", err)
	}
	srv2.Close()
	if err := e.srv.Serve(context.Background()); !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("Serve after Close: %v", err)
	}
}
