package admin_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/subgate/subgate/gateway/admin"
)

// fakeOTA holds the OTA jobs of every fakeBackend (the fake's own fields
// are shared with the device tests).
var fakeOTA = struct {
	mu   sync.Mutex
	jobs map[*fakeBackend][]admin.OTAJob
}{jobs: map[*fakeBackend][]admin.OTAJob{}}

func (f *fakeBackend) setOTAJobs(jobs []admin.OTAJob) {
	fakeOTA.mu.Lock()
	defer fakeOTA.mu.Unlock()
	fakeOTA.jobs[f] = jobs
}

func (f *fakeBackend) OTAJobs(state string, offset, limit int) ([]admin.OTAJob, int) {
	fakeOTA.mu.Lock()
	defer fakeOTA.mu.Unlock()
	var out []admin.OTAJob
	for _, j := range fakeOTA.jobs[f] {
		if state == "" || j.State == state {
			out = append(out, j)
		}
	}
	total := len(out)
	if offset >= len(out) {
		return nil, total
	}
	out = out[offset:]
	return out[:min(limit, len(out))], total
}

func (f *fakeBackend) CancelOTAJob(_ context.Context, id string) (admin.OTAJob, error) {
	fakeOTA.mu.Lock()
	defer fakeOTA.mu.Unlock()
	for i, j := range fakeOTA.jobs[f] {
		if j.ID != id {
			continue
		}
		if j.State == admin.OTASucceeded || j.State == admin.OTAFailed || j.State == admin.OTACanceled {
			return j, fmt.Errorf("fake: job %s is %s: %w", id, j.State, admin.ErrConflict)
		}
		j.State = admin.OTACanceled
		fakeOTA.jobs[f][i] = j
		return j, nil
	}
	return admin.OTAJob{}, fmt.Errorf("fake: job %s: %w", id, admin.ErrNotFound)
}

func otaEnv(t *testing.T) (*env, http.Handler) {
	e := newEnv(t, admin.Options{Token: testToken})
	e.be.setOTAJobs([]admin.OTAJob{
		{ID: "j1", DeviceID: "prod_node-a", State: admin.OTATransferring, Version: "v2", Size: 100, Offset: 40},
		{ID: "j2", DeviceID: "prod_node-b", State: admin.OTASucceeded, Version: "v2", Size: 100, Offset: 100},
		{ID: "j3", DeviceID: "prod_meter-1", State: admin.OTAQueued, Version: "v2", Size: 100},
	})
	t.Cleanup(func() { e.be.setOTAJobs(nil) })
	return e, admin.OTAHandler(e.srv)
}

func otaDo(t *testing.T, h http.Handler, method, target, token string) result {
	t.Helper()
	req := httptest.NewRequest(method, target, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return result{code: rec.Code, header: rec.Header(), body: rec.Body.Bytes()}
}

func TestOTAJobsList(t *testing.T) {
	_, h := otaEnv(t)
	r := otaDo(t, h, "GET", "/api/v1/ota/jobs", testToken)
	if r.code != http.StatusOK {
		t.Fatalf("status %d: %s", r.code, r.body)
	}
	l := decode[admin.OTAJobList](t, r)
	if l.Total != 3 || len(l.Jobs) != 3 || l.Limit != admin.DefaultPageLimit {
		t.Fatalf("list = %+v", l)
	}
	l = decode[admin.OTAJobList](t, otaDo(t, h, "GET", "/api/v1/ota/jobs?state=QUEUED", testToken))
	if l.Total != 1 || l.Jobs[0].ID != "j3" {
		t.Fatalf("state filter = %+v", l)
	}
	l = decode[admin.OTAJobList](t, otaDo(t, h, "GET", "/api/v1/ota/jobs?state=failed", testToken))
	if l.Total != 0 || l.Jobs == nil {
		t.Fatalf("empty list must be [] not null: %+v", l)
	}
	l = decode[admin.OTAJobList](t, otaDo(t, h, "GET", "/api/v1/ota/jobs?offset=1&limit=1", testToken))
	if l.Total != 3 || len(l.Jobs) != 1 || l.Jobs[0].ID != "j2" {
		t.Fatalf("page = %+v", l)
	}
	for _, q := range []string{"?state=done", "?limit=0", "?offset=-1", "?limit=x"} {
		r := otaDo(t, h, "GET", "/api/v1/ota/jobs"+q, testToken)
		if r.code != http.StatusBadRequest || r.errBody(t).Code != admin.CodeBadRequest {
			t.Errorf("%s: status %d %s", q, r.code, r.body)
		}
	}
	if r := otaDo(t, h, "GET", "/api/v1/ota/jobs", ""); r.code != http.StatusUnauthorized {
		t.Errorf("no token: status %d", r.code)
	}
}

func TestOTAJobCancel(t *testing.T) {
	_, h := otaEnv(t)
	r := otaDo(t, h, "DELETE", "/api/v1/ota/jobs/j1", testToken)
	if r.code != http.StatusOK {
		t.Fatalf("status %d: %s", r.code, r.body)
	}
	if j := decode[admin.OTAJob](t, r); j.ID != "j1" || j.State != admin.OTACanceled {
		t.Fatalf("canceled job = %+v", j)
	}
	for _, c := range []struct {
		id   string
		code int
		ec   string
	}{
		{"j1", http.StatusConflict, admin.CodeConflict},
		{"j2", http.StatusConflict, admin.CodeConflict},
		{"nope", http.StatusNotFound, admin.CodeNotFound},
		{"bad%20id", http.StatusBadRequest, admin.CodeBadRequest},
		{strings.Repeat("x", admin.MaxOTAJobIDLen+1), http.StatusBadRequest, admin.CodeBadRequest},
	} {
		r := otaDo(t, h, "DELETE", "/api/v1/ota/jobs/"+c.id, testToken)
		if r.code != c.code || r.errBody(t).Code != c.ec {
			t.Errorf("%s: status %d %s, want %d %s", c.id, r.code, r.body, c.code, c.ec)
		}
	}
	if r := otaDo(t, h, "DELETE", "/api/v1/ota/jobs/j3", "wrong-token-0123456789"); r.code != http.StatusUnauthorized {
		t.Errorf("bad token: status %d", r.code)
	}
}
