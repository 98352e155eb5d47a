package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/subgate/subgate/gateway/admin"
	"github.com/subgate/subgate/subdevice"
)

const cliTestToken = "cli-test-token-0123456789"

// cliFakeBackend is a small hand-written admin.Backend.
type cliFakeBackend struct {
	reg *subdevice.Registry

	// mu guards the following fields.
	mu      sync.Mutex
	online  map[string]bool
	tokens  map[string][]byte
	deleted []string
	kicked  []string
}

func newCLIFakeBackend() *cliFakeBackend {
	seen := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	return &cliFakeBackend{
		reg: subdevice.NewRegistry(1, []subdevice.Device{
			{NodeID: "node-a", DeviceID: "prod_node-a", ProductID: "prod", Status: subdevice.Online,
				Remote: "10.0.0.1:5000", LastSeen: seen, FwVersion: "1.0"},
			{NodeID: "node-b", DeviceID: "prod_node-b", ProductID: "prod", Status: subdevice.Offline},
			{NodeID: "meter\t1", DeviceID: "prod_meter-1", Status: subdevice.Inactive},
		}),
		online: map[string]bool{"prod_node-a": true},
		tokens: map[string][]byte{},
	}
}

func (f *cliFakeBackend) Devices(fl subdevice.Filter, offset, limit int) ([]subdevice.Device, int) {
	return f.reg.List(fl, offset, limit)
}

func (f *cliFakeBackend) Device(id string) (subdevice.Device, bool) {
	if d, ok := f.reg.ByID(id); ok {
		return d, true
	}
	return f.reg.ByNode(id)
}

func (f *cliFakeBackend) Online(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.online[id]
}

func (f *cliFakeBackend) DeleteDevice(_ context.Context, id string) error {
	f.mu.Lock()
	f.deleted = append(f.deleted, id)
	f.mu.Unlock()
	f.reg.Delete(id)
	return nil
}

func (f *cliFakeBackend) Kick(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.online[id] {
		return false
	}
	f.kicked = append(f.kicked, id)
	return true
}

func (f *cliFakeBackend) ProvisionToken(_ context.Context, node string, secret []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokens[node] = bytes.Clone(secret)
	return nil
}

func (f *cliFakeBackend) RevokeToken(_ context.Context, node string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.tokens[node]; !ok {
		return fmt.Errorf("node %s has no token: %w", node, admin.ErrNotFound)
	}
	delete(f.tokens, node)
	return nil
}

func (f *cliFakeBackend) Ready() (bool, string) { return true, "" }

func (f *cliFakeBackend) Status() any {
	return map[string]any{
		"northbound": map[string]any{"state": "connected", "since": "2025-03-04T05:06:07Z"},
		"devices":    map[string]int{"total": 3, "online": 1},
		"outbox":     map[string]any{"messages": 0, "oldest": nil},
		"uptime":     "1h0m0s",
	}
}

func (f *cliFakeBackend) Config() any { return map[string]string{} }

// cliEnv is an admin server (with a token) and a way to run the CLI at it.
type cliEnv struct {
	t         *testing.T
	be        *cliFakeBackend
	url       string
	tokenFile string
	stdin     string
}

func newCLIEnv(t *testing.T) *cliEnv {
	t.Helper()
	be := newCLIFakeBackend()
	srv, err := admin.New(admin.Options{Listen: "127.0.0.1:0", Token: cliTestToken}, be)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	tf := filepath.Join(t.TempDir(), "admin.token")
	if err := os.WriteFile(tf, []byte(cliTestToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return &cliEnv{t: t, be: be, url: hs.URL, tokenFile: tf}
}

// run runs the CLI with the env's address and token file given through the
// environment variables, as an operator's shell would.
func (e *cliEnv) run(args ...string) (code int, stdout, stderr string) {
	e.t.Helper()
	env := map[string]string{"SUBGATE_ADMIN_ADDR": e.url, "SUBGATE_ADMIN_TOKEN_FILE": e.tokenFile}
	return runWith(env, e.stdin, args...)
}

func runWith(env map[string]string, stdin string, args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	c := &cliRunner{stdout: &out, stderr: &errb, stdin: strings.NewReader(stdin),
		getenv: func(k string) string { return env[k] }, readFile: cliReadFile}
	code := c.run(args)
	return code, out.String(), errb.String()
}

func TestIsCLICommand(t *testing.T) {
	for _, s := range []string{"devices", "tokens", "status", "ota"} {
		if !isCLICommand(s) {
			t.Errorf("isCLICommand(%q) = false", s)
		}
	}
	for _, s := range []string{"", "-config", "run", "device", "-healthcheck"} {
		if isCLICommand(s) {
			t.Errorf("isCLICommand(%q) = true", s)
		}
	}
}

func TestDevicesListTable(t *testing.T) {
	e := newCLIEnv(t)
	code, out, errOut := e.run("devices", "list")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != 5 {
		t.Fatalf("want header, 3 rows and a footer:\n%s", out)
	}
	for _, h := range []string{"NODE ID", "DEVICE ID", "PRODUCT", "STATUS", "ONLINE", "REMOTE", "LAST SEEN"} {
		if !strings.Contains(lines[0], h) {
			t.Errorf("header lacks %q: %q", h, lines[0])
		}
	}
	// Rows are sorted by device id; control characters from the server
	// cannot break the table.
	if f := strings.Fields(lines[1]); len(f) != 7 || f[0] != "meter?1" || f[2] != "-" || f[4] != "no" {
		t.Errorf("row 1: %q", lines[1])
	}
	if f := strings.Fields(lines[2]); len(f) != 7 || f[0] != "node-a" || f[1] != "prod_node-a" || f[3] != "ONLINE" ||
		f[4] != "yes" || f[5] != "10.0.0.1:5000" || f[6] != "2025-03-04T05:06:07Z" {
		t.Errorf("row 2: %q", lines[2])
	}
	if lines[4] != "3 of 3 devices (offset 0)" {
		t.Errorf("footer %q", lines[4])
	}
}

func TestDevicesListFiltersAndJSON(t *testing.T) {
	e := newCLIEnv(t)
	// Flags may come in any order, lower-case status is accepted.
	code, out, errOut := e.run("devices", "list", "-status", "online", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var l cliDeviceList
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatalf("json output: %v\n%s", err, out)
	}
	if l.Total != 1 || len(l.Devices) != 1 || l.Devices[0].NodeID != "node-a" || !l.Devices[0].Online {
		t.Errorf("filtered list: %+v", l)
	}
	code, out, _ = e.run("devices", "list", "-prefix", "node-", "-limit", "1", "-offset", "1")
	if code != 0 || !strings.Contains(out, "node-b") || strings.Contains(out, "node-a") ||
		!strings.Contains(out, "1 of 2 devices (offset 1)") {
		t.Errorf("paged list: exit %d\n%s", code, out)
	}
	// The server's validation message reaches the user.
	code, _, errOut = e.run("devices", "list", "-limit", "5000")
	if code != 1 || !strings.Contains(errOut, "limit must be an integer from 1 to 1000") || !strings.Contains(errOut, "bad_request") {
		t.Errorf("limit too large: exit %d: %s", code, errOut)
	}
	code, _, errOut = e.run("devices", "list", "-status", "BROKEN")
	if code != 1 || !strings.Contains(errOut, "status must be") {
		t.Errorf("bad status: exit %d: %s", code, errOut)
	}
}

func TestDevicesShowDeleteKick(t *testing.T) {
	e := newCLIEnv(t)
	code, out, errOut := e.run("devices", "show", "node-a")
	if code != 0 || !strings.Contains(out, "DEVICE ID:") || !strings.Contains(out, "prod_node-a") ||
		!strings.Contains(out, "FW VERSION:") {
		t.Errorf("show: exit %d %s\n%s", code, errOut, out)
	}
	// Flags after the positional argument.
	code, out, _ = e.run("devices", "show", "node-a", "-o", "json")
	var d cliDevice
	if code != 0 || json.Unmarshal([]byte(out), &d) != nil || d.DeviceID != "prod_node-a" || !d.Online {
		t.Errorf("show json: exit %d\n%s", code, out)
	}
	code, _, errOut = e.run("devices", "show", "ghost")
	if code != 1 || !strings.Contains(errOut, `no device with device id or node id "ghost" (not_found, HTTP 404)`) {
		t.Errorf("show unknown: exit %d: %s", code, errOut)
	}
	code, _, errOut = e.run("devices", "show", "a/b")
	if code != 1 || !strings.Contains(errOut, "bad_request") {
		t.Errorf("show bad id: exit %d: %s", code, errOut)
	}

	code, out, errOut = e.run("devices", "kick", "node-a")
	if code != 0 || out != "disconnected device prod_node-a (node node-a)\n" {
		t.Errorf("kick: exit %d %s %q", code, errOut, out)
	}
	code, _, errOut = e.run("devices", "kick", "node-b")
	if code != 1 || !strings.Contains(errOut, "not connected") {
		t.Errorf("kick offline: exit %d: %s", code, errOut)
	}

	code, out, errOut = e.run("devices", "delete", "node-b")
	if code != 0 || out != "deleted device prod_node-b (node node-b)\n" {
		t.Errorf("delete: exit %d %s %q", code, errOut, out)
	}
	e.be.mu.Lock()
	defer e.be.mu.Unlock()
	if len(e.be.deleted) != 1 || e.be.deleted[0] != "prod_node-b" || len(e.be.kicked) != 1 {
		t.Errorf("backend saw deleted=%v kicked=%v", e.be.deleted, e.be.kicked)
	}
}

func TestTokensSetAndRevoke(t *testing.T) {
	e := newCLIEnv(t)
	code, out, errOut := e.run("tokens", "set", "node-a")
	if code != 0 || !strings.Contains(out, "shown only once") {
		t.Fatalf("generate: exit %d %s\n%s", code, errOut, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	e.be.mu.Lock()
	stored := string(e.be.tokens["node-a"])
	e.be.mu.Unlock()
	if len(stored) != 64 || lines[len(lines)-1] != stored {
		t.Errorf("printed secret %q, stored %q", lines[len(lines)-1], stored)
	}

	sf := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(sf, []byte("file-secret-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = e.run("tokens", "set", "node-b", "-secret-file", sf)
	if code != 0 || out != "token secret stored for node node-b\n" || strings.Contains(out, "file-secret") {
		t.Errorf("from file: exit %d %s %q", code, errOut, out)
	}
	e.stdin = "stdin-secret-0123456789\n"
	code, _, errOut = e.run("tokens", "set", "-secret-file", "-", "node-c")
	if code != 0 {
		t.Errorf("from stdin: exit %d %s", code, errOut)
	}
	e.be.mu.Lock()
	if got := string(e.be.tokens["node-b"]); got != "file-secret-0123456789" {
		t.Errorf("node-b secret %q", got)
	}
	if got := string(e.be.tokens["node-c"]); got != "stdin-secret-0123456789" {
		t.Errorf("node-c secret %q", got)
	}
	e.be.mu.Unlock()

	e.stdin = "short"
	code, _, errOut = e.run("tokens", "set", "node-d", "-secret-file", "-")
	if code != 1 || !strings.Contains(errOut, "secret must be") {
		t.Errorf("short secret: exit %d: %s", code, errOut)
	}
	code, _, errOut = e.run("tokens", "set", "node-d", "-secret-file", filepath.Join(t.TempDir(), "missing"))
	if code != 1 || !strings.Contains(errOut, "read secret") {
		t.Errorf("missing secret file: exit %d: %s", code, errOut)
	}

	code, out, _ = e.run("tokens", "revoke", "node-b")
	if code != 0 || out != "token secret revoked for node node-b\n" {
		t.Errorf("revoke: exit %d %q", code, out)
	}
	code, _, errOut = e.run("tokens", "revoke", "node-b")
	if code != 1 || !strings.Contains(errOut, "not_found") {
		t.Errorf("revoke again: exit %d: %s", code, errOut)
	}
}

func TestStatus(t *testing.T) {
	e := newCLIEnv(t)
	code, out, errOut := e.run("status")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"devices.online", "northbound.state", "connected", "outbox.oldest", "uptime", "1h0m0s"} {
		if !strings.Contains(out, want) {
			t.Errorf("status table lacks %q:\n%s", want, out)
		}
	}
	if !strings.HasPrefix(out, "devices.online") {
		t.Errorf("rows not sorted:\n%s", out)
	}
	code, out, _ = e.run("status", "-o", "json")
	var v map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &v) != nil || v["uptime"] != "1h0m0s" {
		t.Errorf("status json: exit %d\n%s", code, out)
	}
}

func TestAuthErrors(t *testing.T) {
	e := newCLIEnv(t)
	// No token file: the server's 401 message is shown.
	code, _, errOut := runWith(map[string]string{"SUBGATE_ADMIN_ADDR": e.url}, "", "status")
	if code != 1 || !strings.Contains(errOut, "missing or invalid bearer token (unauthorized, HTTP 401)") {
		t.Errorf("no token: exit %d: %s", code, errOut)
	}
	// The -token-file flag overrides the environment.
	wrong := filepath.Join(t.TempDir(), "wrong")
	if err := os.WriteFile(wrong, []byte("not-the-right-token-000"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, _ := e.run("status", "-token-file", wrong); code != 1 {
		t.Errorf("wrong token: exit %d", code)
	}
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := e.run("status", "-token-file", empty); code != 1 || !strings.Contains(errOut, "is empty") {
		t.Errorf("empty token file: exit %d: %s", code, errOut)
	}
	if code, _, errOut := e.run("status", "-token-file", filepath.Join(t.TempDir(), "nope")); code != 1 ||
		!strings.Contains(errOut, "read token file") {
		t.Errorf("missing token file: exit %d: %s", code, errOut)
	}
	// -addr without a scheme and with a trailing slash.
	addr := strings.TrimPrefix(e.url, "http://") + "/"
	if code, _, errOut := e.run("status", "-addr", addr); code != 0 {
		t.Errorf("-addr %q: exit %d: %s", addr, code, errOut)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"devices"},
		{"devices", "frobnicate"},
		{"devices", "show"},
		{"devices", "show", "a", "b"},
		{"devices", "list", "extra"},
		{"devices", "list", "-o", "yaml"},
		{"devices", "list", "-limit", "0"},
		{"devices", "list", "-offset", "-3"},
		{"devices", "list", "-nosuchflag"},
		{"devices", "list", "-timeout", "0s"},
		{"devices", "list", "-addr", "ftp://host"},
		{"devices", "list", "-addr", "http://user:pw@host:1"},
		{"tokens", "set"},
		{"status", "x"},
		{"ota"},
		{"ota", "start"},
	} {
		code, out, errOut := runWith(nil, "", args...)
		if code != 2 || errOut == "" || strings.Contains(out, "NODE ID") {
			t.Errorf("%q: exit %d, stderr %q", args, code, errOut)
		}
	}
	if code, out, _ := runWith(nil, "", "devices", "-h"); code != 0 || !strings.Contains(out, "usage: subgate") {
		t.Errorf("devices -h: exit %d %q", code, out)
	}
	if code, _, errOut := runWith(nil, "", "devices", "list", "-h"); code != 0 || !strings.Contains(errOut, "-prefix") {
		t.Errorf("devices list -h: exit %d %q", code, errOut)
	}
}

func TestNonJSONErrorsAndUnreachable(t *testing.T) {
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "upstream proxy exploded\nsecond line", http.StatusBadGateway)
	}))
	defer hs.Close()
	code, _, errOut := runWith(map[string]string{"SUBGATE_ADMIN_ADDR": hs.URL}, "", "status")
	if code != 1 || !strings.Contains(errOut, "502 Bad Gateway: upstream proxy exploded (HTTP 502)") ||
		strings.Contains(errOut, "second line") {
		t.Errorf("text error: exit %d: %q", code, errOut)
	}

	hs2 := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("not json"))
	}))
	defer hs2.Close()
	if code, _, errOut := runWith(map[string]string{"SUBGATE_ADMIN_ADDR": hs2.URL}, "", "status"); code != 1 ||
		!strings.Contains(errOut, "decode answer") {
		t.Errorf("bad 200 body: exit %d: %q", code, errOut)
	}

	// A closed server's address refuses connections.
	hs3 := httptest.NewServer(http.NotFoundHandler())
	addr := hs3.URL
	hs3.Close()
	if code, _, errOut := runWith(map[string]string{"SUBGATE_ADMIN_ADDR": addr}, "", "devices", "list"); code != 1 ||
		!strings.Contains(errOut, "admin API unreachable") {
		t.Errorf("unreachable: exit %d: %q", code, errOut)
	}
}

func TestRunCLIUsesProcessEnvironment(t *testing.T) {
	e := newCLIEnv(t)
	t.Setenv("SUBGATE_ADMIN_ADDR", e.url)
	t.Setenv("SUBGATE_ADMIN_TOKEN_FILE", e.tokenFile)
	var out, errb bytes.Buffer
	if code := runCLI([]string{"devices", "list", "-o", "json"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if !json.Valid(out.Bytes()) {
		t.Errorf("output is not JSON: %s", out.String())
	}
}
