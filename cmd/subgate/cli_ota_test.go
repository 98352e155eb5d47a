package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/subgate/subgate/gateway/admin"
)

// The admin.Backend OTA methods of the device tests' fake: it runs no
// upgrades.
func (f *cliFakeBackend) OTAJobs(string, int, int) ([]admin.OTAJob, int) { return nil, 0 }

func (f *cliFakeBackend) CancelOTAJob(_ context.Context, id string) (admin.OTAJob, error) {
	return admin.OTAJob{}, fmt.Errorf("OTA job %q: %w", id, admin.ErrNotFound)
}

// otaAPI is a hand-written stand-in for the admin server's OTA routes
// (docs/admin-api.md): it checks the token, records the requests and
// answers like the server.
type otaAPI struct {
	mu   sync.Mutex
	reqs []string
	jobs []admin.OTAJob
}

func (a *otaAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.reqs = append(a.reqs, r.Method+" "+r.URL.RequestURI())
	w.Header().Set("Content-Type", "application/json")
	if r.Header.Get("Authorization") != "Bearer "+cliTestToken {
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprint(w, `{"error":"missing or invalid bearer token","code":"unauthorized"}`)
		return
	}
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/api/v1/ota/jobs":
		state := r.URL.Query().Get("state")
		var out []admin.OTAJob
		for _, j := range a.jobs {
			if state == "" || j.State == state {
				out = append(out, j)
			}
		}
		json.NewEncoder(w).Encode(admin.OTAJobList{Total: len(out), Limit: 100, Jobs: out})
	case r.Method == http.MethodDelete && strings.HasPrefix(r.URL.Path, "/api/v1/ota/jobs/"):
		id := strings.TrimPrefix(r.URL.Path, "/api/v1/ota/jobs/")
		for i, j := range a.jobs {
			if j.ID != id {
				continue
			}
			if j.State == admin.OTASucceeded {
				w.WriteHeader(http.StatusConflict)
				fmt.Fprintf(w, `{"error":"OTA job %s already succeeded","code":"conflict"}`, id)
				return
			}
			a.jobs[i].State = admin.OTACanceled
			json.NewEncoder(w).Encode(a.jobs[i])
			return
		}
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprintf(w, `{"error":"OTA job %s not found","code":"not_found"}`, id)
	default:
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprint(w, `{"error":"no route","code":"not_found"}`)
	}
}

func newOTAEnv(t *testing.T) (*cliEnv, *otaAPI) {
	e := newCLIEnv(t)
	at := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	api := &otaAPI{jobs: []admin.OTAJob{
		{ID: "ota-1", DeviceID: "prod_node-a", Version: "v2", Size: 1000, Offset: 250, State: admin.OTATransferring, Updated: at},
		{ID: "ota-2", DeviceID: "prod_node-b", Version: "v2", Size: 1000, Offset: 1000, State: admin.OTASucceeded, Attempts: 1, Updated: at},
		{ID: "ota-3", DeviceID: "prod_meter-1", Version: "v2", Size: 1000, State: admin.OTAFailed, ResultCode: 7,
			Description: "package SHA-256 does not match sign", Updated: at},
	}}
	hs := httptest.NewServer(api)
	t.Cleanup(hs.Close)
	e.url = hs.URL
	return e, api
}

func TestOTAList(t *testing.T) {
	e, api := newOTAEnv(t)
	code, out, errOut := e.run("ota", "list")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != 5 || !strings.HasPrefix(lines[0], "JOB ID") || lines[4] != "3 of 3 jobs (offset 0)" {
		t.Fatalf("table:\n%s", out)
	}
	if f := strings.Fields(lines[1]); len(f) != 8 || f[0] != "ota-1" || f[3] != "transferring" || f[4] != "25%" || f[6] != "-" {
		t.Errorf("row 1: %q", lines[1])
	}
	if f := strings.Fields(lines[3]); len(f) != 8 || f[3] != "failed" || f[6] != "7" || f[7] != "2025-03-04T05:06:07Z" {
		t.Errorf("row 3: %q", lines[3])
	}
	code, out, _ = e.run("ota", "list", "-state", "FAILED", "-o", "json", "-limit", "5")
	var l admin.OTAJobList
	if code != 0 || json.Unmarshal([]byte(out), &l) != nil || l.Total != 1 || l.Jobs[0].ID != "ota-3" {
		t.Errorf("json: exit %d\n%s", code, out)
	}
	api.mu.Lock()
	last := api.reqs[len(api.reqs)-1]
	api.mu.Unlock()
	if last != "GET /api/v1/ota/jobs?limit=5&offset=0&state=failed" {
		t.Errorf("request %q", last)
	}
	for _, args := range [][]string{{"ota", "list", "-state", "done"}, {"ota", "list", "-limit", "0"}, {"ota", "list", "x"}} {
		if code, _, errOut := e.run(args...); code != 2 || errOut == "" {
			t.Errorf("%q: exit %d %q", args, code, errOut)
		}
	}
}

func TestOTACancel(t *testing.T) {
	e, _ := newOTAEnv(t)
	code, out, errOut := e.run("ota", "cancel", "ota-1")
	if code != 0 || out != "canceled OTA job ota-1 (device prod_node-a, version v2)\n" {
		t.Fatalf("exit %d %q %q", code, out, errOut)
	}
	code, _, errOut = e.run("ota", "cancel", "ota-2")
	if code != 1 || !strings.Contains(errOut, "already succeeded (conflict, HTTP 409)") {
		t.Errorf("finished job: exit %d %q", code, errOut)
	}
	code, _, errOut = e.run("ota", "cancel", "nope")
	if code != 1 || !strings.Contains(errOut, "not_found, HTTP 404") {
		t.Errorf("unknown job: exit %d %q", code, errOut)
	}
	if code, _, _ := e.run("ota", "cancel"); code != 2 {
		t.Errorf("no id: exit %d", code)
	}
	code, _, errOut = runWith(map[string]string{"SUBGATE_ADMIN_ADDR": e.url}, "", "ota", "cancel", "ota-1")
	if code != 1 || !strings.Contains(errOut, "HTTP 401") {
		t.Errorf("no token: exit %d %q", code, errOut)
	}
}
