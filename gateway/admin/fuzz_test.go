package admin_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/subgate/subgate/gateway/admin"
)

// FuzzRequest sends arbitrary requests to the admin API: whatever the
// method, path, query, body and token, it answers with a valid status and,
// for an error under /api/, the documented JSON error body; it never
// panics and never echoes a secret it was sent.
func FuzzRequest(f *testing.F) {
	f.Add(uint8(0), "/api/v1/devices", "limit=10&offset=0&status=ONLINE", []byte(nil), true)
	f.Add(uint8(1), "/api/v1/tokens/node-1", "", []byte(`{"secret":"0123456789abcdef-secret"}`), true)
	f.Add(uint8(1), "/api/v1/tokens/node-1", "", []byte(`{"secret":1}`), true)
	f.Add(uint8(2), "/api/v1/devices/dev-1", "", []byte(nil), false)
	f.Add(uint8(3), "/api/v1/devices/dev-1/kick", "", []byte("x"), true)
	f.Add(uint8(0), "/api/v1/ota/jobs", "state=failed&limit=-1", []byte(nil), true)
	f.Add(uint8(4), "/readyz", "", []byte(nil), false)
	methods := []string{http.MethodGet, http.MethodPut, http.MethodDelete, http.MethodPost, http.MethodHead, http.MethodPatch, "BREW"}
	f.Fuzz(func(t *testing.T, m uint8, path, query string, body []byte, withToken bool) {
		if !strings.HasPrefix(path, "/") || strings.ContainsAny(path, "?#") {
			return
		}
		target := path
		if query != "" {
			target += "?" + query
		}
		if _, err := url.ParseRequestURI(target); err != nil || strings.ContainsFunc(target, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
			return // not a request line a server can receive (httptest.NewRequest panics)
		}
		e := newEnv(t, admin.Options{Token: testToken})
		auth := ptr("")
		if withToken {
			auth = ptr("Bearer " + testToken)
		}
		r := e.do(methods[int(m)%len(methods)], target, string(body), auth)
		if r.code < 200 || r.code > 599 {
			t.Fatalf("status %d", r.code)
		}
		if r.code >= 400 && strings.HasPrefix(path, "/api/") && len(r.body) > 0 {
			r.errBody(t)
		}
		// A secret sent in the body is never echoed in an error.
		if r.code >= 400 && len(body) >= admin.MinSecretLen && utf8.Valid(body) && strings.Contains(string(r.body), string(body)) {
			t.Fatalf("the request body came back in the error: %q", r.body)
		}
	})
}
