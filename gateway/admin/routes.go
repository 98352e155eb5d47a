package admin

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/subgate/subgate/metrics"
	"github.com/subgate/subgate/subdevice"
)

// Error codes of the JSON error body {"error": "...", "code": "..."}.
const (
	CodeBadRequest       = "bad_request"
	CodeUnauthorized     = "unauthorized"
	CodeNotFound         = "not_found"
	CodeMethodNotAllowed = "method_not_allowed"
	CodeConflict         = "conflict"
	CodeTooLarge         = "payload_too_large"
	CodeNotReady         = "not_ready"
	CodeBusy             = "busy"
	CodeUnavailable      = "unavailable"
	CodeRejected         = "rejected"
	CodeTimeout          = "timeout"
	CodeInternal         = "internal"
)

// routeOther labels requests that matched no route (404, 405, redirects).
const routeOther = "other"

// ErrorBody is the JSON body of every 4xx and 5xx answer of the API.
type ErrorBody struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// DeviceView is a device record as the API shows it.
type DeviceView struct {
	subdevice.Device
	// Online reports a live connection to the gateway right now.
	Online bool `json:"online"`
}

// DeviceList is the answer of GET /api/v1/devices.
type DeviceList struct {
	Total   int          `json:"total"`
	Offset  int          `json:"offset"`
	Limit   int          `json:"limit"`
	Devices []DeviceView `json:"devices"`
}

// TokenRequest is the optional body of PUT /api/v1/tokens/{node_id}.
type TokenRequest struct {
	Secret string `json:"secret"`
}

// TokenResult answers PUT and DELETE /api/v1/tokens/{node_id}. Secret is
// set only when the server generated it, and only in that one answer.
type TokenResult struct {
	NodeID    string `json:"node_id"`
	Secret    string `json:"secret,omitempty"`
	Generated bool   `json:"generated,omitempty"`
	Revoked   bool   `json:"revoked,omitempty"`
}

// Readiness is the body of /readyz.
type Readiness struct {
	Ready  bool   `json:"ready"`
	Reason string `json:"reason,omitempty"`
	// Error and Code are set with 503 so the body is also an ErrorBody.
	Error string `json:"error,omitempty"`
	Code  string `json:"code,omitempty"`
}

// routeFlags say how a route is guarded.
type routeFlags uint8

const (
	// open routes need no token and skip the in-flight bound (probes).
	open routeFlags = 1 << iota
)

// respWriter records the status for metrics and the access log, knows
// which route handles the request, and turns the mux's own plain-text
// 404/405 answers into JSON.
type respWriter struct {
	http.ResponseWriter
	route       string // set by our route handlers; empty for mux internals
	code        int
	wroteHeader bool
	swallow     bool // body of a mux-internal error already replaced
	n           int64
}

func (w *respWriter) WriteHeader(code int) {
	if w.wroteHeader {
		return
	}
	w.wroteHeader = true
	w.code = code
	if w.route == "" && code >= 400 {
		// A mux-internal answer (no route, wrong method, bad request URI):
		// replace the text body with JSON. 405 keeps its Allow header.
		w.swallow = true
		msg, errCode := "no such route", CodeNotFound
		switch code {
		case http.StatusMethodNotAllowed:
			msg, errCode = "method not allowed", CodeMethodNotAllowed
		case http.StatusBadRequest:
			msg, errCode = "bad request", CodeBadRequest
		}
		body := errorJSON(ErrorBody{Error: msg, Code: errCode})
		h := w.Header()
		h.Del("Content-Length")
		h.Set("Content-Type", "application/json")
		h.Set("X-Content-Type-Options", "nosniff")
		w.ResponseWriter.WriteHeader(code)
		n, _ := w.ResponseWriter.Write(body)
		w.n += int64(n)
		return
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *respWriter) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.swallow {
		return len(p), nil
	}
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the connection (flush,
// deadlines) through this wrapper.
func (w *respWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// errorJSON encodes an ErrorBody; it cannot fail for two strings, but a
// fixed body stands in should it ever.
func errorJSON(e ErrorBody) []byte {
	b, err := json.Marshal(e)
	if err != nil {
		return []byte(`{"error":"internal error","code":"internal"}` + "\n")
	}
	return append(b, '\n')
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	s.handle(mux, "GET /healthz", open, s.healthz)
	s.handle(mux, "GET /readyz", open, s.readyz)
	if s.opts.Registry != nil {
		mh := metrics.Handler(s.opts.Registry, s.opts.Logger)
		s.handle(mux, "GET /metrics", 0, mh.ServeHTTP)
	}
	s.handle(mux, "GET /api/v1/devices", 0, s.listDevices)
	s.handle(mux, "GET /api/v1/devices/{id}", 0, s.showDevice)
	s.handle(mux, "DELETE /api/v1/devices/{id}", 0, s.deleteDevice)
	s.handle(mux, "POST /api/v1/devices/{id}/kick", 0, s.kickDevice)
	s.handle(mux, "PUT /api/v1/tokens/{node_id}", 0, s.putToken)
	s.handle(mux, "DELETE /api/v1/tokens/{node_id}", 0, s.revokeToken)
	s.handle(mux, "GET /api/v1/status", 0, s.status)
	s.handle(mux, "GET /api/v1/config", 0, s.config)
	s.otaRoutes(mux)
	if s.opts.Pprof {
		// pprof.Index also serves the named profiles below /debug/pprof/.
		s.handle(mux, "GET /debug/pprof/", 0, pprof.Index)
		s.handle(mux, "GET /debug/pprof/cmdline", 0, pprof.Cmdline)
		s.handle(mux, "GET /debug/pprof/profile", 0, pprof.Profile)
		s.handle(mux, "GET /debug/pprof/symbol", 0, pprof.Symbol)
		s.handle(mux, "POST /debug/pprof/symbol", 0, pprof.Symbol)
		s.handle(mux, "GET /debug/pprof/trace", 0, pprof.Trace)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rw := &respWriter{ResponseWriter: w}
		mux.ServeHTTP(rw, r)
		if !rw.wroteHeader {
			rw.WriteHeader(http.StatusOK)
		}
		route := rw.route
		if route == "" {
			route = routeOther
		}
		code := strconv.Itoa(rw.code)
		s.requests.WithLabelValues(route, code).Inc()
		// The access log names the route pattern, never the query or the
		// body: no secrets, bounded size.
		s.log.Debug("admin request", "route", route, "code", rw.code,
			"remote", r.RemoteAddr, "n", rw.n, "dur", time.Since(start))
	})
}

// handle registers fn under pattern behind the token check (unless open)
// and the in-flight bound (unless open).
func (s *Server) handle(mux *http.ServeMux, pattern string, flags routeFlags, fn http.HandlerFunc) {
	mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		if rw, ok := w.(*respWriter); ok {
			rw.route = pattern
		}
		if flags&open == 0 {
			if !s.authorized(r) {
				s.unauthorized(w, r)
				return
			}
			select {
			case s.inFlight <- struct{}{}:
				defer func() { <-s.inFlight }()
			default:
				writeError(w, http.StatusServiceUnavailable, CodeBusy, "too many concurrent admin requests")
				return
			}
		}
		if r.Body != nil {
			r.Body = http.MaxBytesReader(w, r.Body, s.opts.MaxBodyBytes)
		}
		fn(w, r)
	})
}

// authorized checks the bearer token in constant time. Both sides are
// hashed first so that the comparison does not leak the token's length.
func (s *Server) authorized(r *http.Request) bool {
	if s.tokenHash == nil {
		return true
	}
	scheme, cred, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(cred)))
	return subtle.ConstantTimeCompare(got[:], s.tokenHash[:]) == 1
}

func (s *Server) unauthorized(w http.ResponseWriter, r *http.Request) {
	challenge := `Bearer realm="subgate"`
	if r.Header.Get("Authorization") != "" {
		challenge += `, error="invalid_token"`
	}
	w.Header().Set("WWW-Authenticate", challenge)
	writeError(w, http.StatusUnauthorized, CodeUnauthorized, "missing or invalid bearer token")
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	// Answers are read by people and tools, never embedded in HTML.
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		writeError(w, http.StatusInternalServerError, CodeInternal, "cannot encode the answer as JSON")
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write(buf.Bytes())
}

func writeError(w http.ResponseWriter, code int, errCode, msg string) {
	writeJSON(w, code, ErrorBody{Error: msg, Code: errCode})
}

// backendError answers a Backend error: the sentinels choose the status.
func (s *Server) backendError(w http.ResponseWriter, op string, err error) {
	switch {
	case errors.Is(err, ErrNotFound):
		writeError(w, http.StatusNotFound, CodeNotFound, err.Error())
	case errors.Is(err, ErrUnavailable):
		writeError(w, http.StatusServiceUnavailable, CodeUnavailable, err.Error())
	case errors.Is(err, ErrRejected):
		writeError(w, http.StatusBadGateway, CodeRejected, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		writeError(w, http.StatusGatewayTimeout, CodeTimeout, op+": no answer in time")
	case errors.Is(err, context.Canceled):
		// The client went away or the server is shutting down.
		writeError(w, http.StatusServiceUnavailable, CodeUnavailable, op+": canceled")
	default:
		s.log.Error("admin backend call failed", "route", op, "err", err)
		writeError(w, http.StatusInternalServerError, CodeInternal, op+": internal error")
	}
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	if s.draining.Load() {
		writeJSON(w, http.StatusServiceUnavailable, Readiness{Reason: "shutting down",
			Error: "not ready: shutting down", Code: CodeNotReady})
		return
	}
	if ok, reason := s.backend.Ready(); !ok {
		if reason == "" {
			reason = "not ready"
		}
		writeJSON(w, http.StatusServiceUnavailable, Readiness{Reason: reason,
			Error: "not ready: " + reason, Code: CodeNotReady})
		return
	}
	writeJSON(w, http.StatusOK, Readiness{Ready: true})
}

// MaxPrefixLen bounds the prefix filter of GET /api/v1/devices.
const MaxPrefixLen = subdevice.MaxDeviceIDLen

func (s *Server) listDevices(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var f subdevice.Filter
	if v := q.Get("status"); v != "" {
		st := subdevice.Status(strings.ToUpper(v))
		if !st.Valid() {
			writeError(w, http.StatusBadRequest, CodeBadRequest, "status must be ONLINE, OFFLINE or INACTIVE")
			return
		}
		f.Status = st
	}
	f.Prefix = q.Get("prefix")
	if len(f.Prefix) > MaxPrefixLen {
		writeError(w, http.StatusBadRequest, CodeBadRequest, "prefix is longer than "+strconv.Itoa(MaxPrefixLen)+" bytes")
		return
	}
	offset, ok := intParam(w, q.Get("offset"), 0, 0, -1, "offset")
	if !ok {
		return
	}
	limit, ok := intParam(w, q.Get("limit"), DefaultPageLimit, 1, s.opts.MaxPageLimit, "limit")
	if !ok {
		return
	}
	devs, total := s.backend.Devices(f, offset, limit)
	if len(devs) > limit {
		devs = devs[:limit]
	}
	out := DeviceList{Total: total, Offset: offset, Limit: limit, Devices: make([]DeviceView, len(devs))}
	for i, d := range devs {
		out.Devices[i] = DeviceView{Device: d, Online: s.backend.Online(d.DeviceID)}
	}
	writeJSON(w, http.StatusOK, out)
}

// intParam parses a decimal query parameter in [lo, hi] (hi < 0: no upper
// bound), def when absent; it answers 400 itself and returns false on bad
// input.
func intParam(w http.ResponseWriter, v string, def, lo, hi int, name string) (int, bool) {
	if v == "" {
		return def, true
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || (hi >= 0 && n > hi) {
		msg := name + " must be an integer >= " + strconv.Itoa(lo)
		if hi >= 0 {
			msg = name + " must be an integer from " + strconv.Itoa(lo) + " to " + strconv.Itoa(hi)
		}
		writeError(w, http.StatusBadRequest, CodeBadRequest, msg)
		return 0, false
	}
	return n, true
}

// device resolves the {id} path value (device id or node id); it answers
// 400 or 404 itself and returns false when there is no such device.
func (s *Server) device(w http.ResponseWriter, r *http.Request) (subdevice.Device, bool) {
	id := r.PathValue("id")
	// A node id follows the same rule with a shorter limit, so the device
	// id rule accepts both.
	if err := subdevice.ValidateDeviceID(id); err != nil {
		writeError(w, http.StatusBadRequest, CodeBadRequest, err.Error())
		return subdevice.Device{}, false
	}
	d, ok := s.backend.Device(id)
	if !ok {
		writeError(w, http.StatusNotFound, CodeNotFound, "no device with device id or node id "+strconv.Quote(id))
		return subdevice.Device{}, false
	}
	return d, true
}

func (s *Server) showDevice(w http.ResponseWriter, r *http.Request) {
	d, ok := s.device(w, r)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, DeviceView{Device: d, Online: s.backend.Online(d.DeviceID)})
}

func (s *Server) deleteDevice(w http.ResponseWriter, r *http.Request) {
	d, ok := s.device(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.opts.BackendTimeout)
	defer cancel()
	if err := s.backend.DeleteDevice(ctx, d.DeviceID); err != nil {
		s.backendError(w, "delete device", err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"device_id": d.DeviceID, "node_id": d.NodeID, "deleted": true})
}

func (s *Server) kickDevice(w http.ResponseWriter, r *http.Request) {
	d, ok := s.device(w, r)
	if !ok {
		return
	}
	if !s.backend.Kick(d.DeviceID) {
		writeError(w, http.StatusConflict, CodeConflict, "device "+strconv.Quote(d.DeviceID)+" is not connected")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"device_id": d.DeviceID, "node_id": d.NodeID, "kicked": true})
}

func nodeParam(w http.ResponseWriter, r *http.Request) (string, bool) {
	node := r.PathValue("node_id")
	if err := subdevice.ValidateNodeID(node); err != nil {
		writeError(w, http.StatusBadRequest, CodeBadRequest, err.Error())
		return "", false
	}
	return node, true
}

func (s *Server) putToken(w http.ResponseWriter, r *http.Request) {
	node, ok := nodeParam(w, r)
	if !ok {
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, CodeTooLarge,
				"body is larger than "+strconv.FormatInt(mbe.Limit, 10)+" bytes")
			return
		}
		writeError(w, http.StatusBadRequest, CodeBadRequest, "cannot read the body")
		return
	}
	var secret string
	generated := false
	if len(bytes.TrimSpace(body)) == 0 {
		raw := make([]byte, GeneratedSecretBytes)
		if _, err := rand.Read(raw); err != nil {
			s.backendError(w, "generate secret", err)
			return
		}
		secret, generated = hex.EncodeToString(raw), true
	} else {
		var req TokenRequest
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		// Decoder messages never quote string values, so the secret cannot
		// leak through them; still, answer with a fixed message.
		if err := dec.Decode(&req); err != nil || dec.More() {
			writeError(w, http.StatusBadRequest, CodeBadRequest, `body must be empty or a JSON object {"secret": "<string>"}`)
			return
		}
		if len(req.Secret) < MinSecretLen || len(req.Secret) > MaxSecretLen {
			writeError(w, http.StatusBadRequest, CodeBadRequest,
				"secret must be "+strconv.Itoa(MinSecretLen)+" to "+strconv.Itoa(MaxSecretLen)+" bytes")
			return
		}
		secret = req.Secret
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.opts.BackendTimeout)
	defer cancel()
	if err := s.backend.ProvisionToken(ctx, node, []byte(secret)); err != nil {
		s.backendError(w, "provision token", err)
		return
	}
	res := TokenResult{NodeID: node}
	if generated {
		res.Secret, res.Generated = secret, true
	}
	writeJSON(w, http.StatusOK, res)
}

func (s *Server) revokeToken(w http.ResponseWriter, r *http.Request) {
	node, ok := nodeParam(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.opts.BackendTimeout)
	defer cancel()
	if err := s.backend.RevokeToken(ctx, node); err != nil {
		s.backendError(w, "revoke token", err)
		return
	}
	writeJSON(w, http.StatusOK, TokenResult{NodeID: node, Revoked: true})
}

func (s *Server) status(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.backend.Status())
}

func (s *Server) config(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.backend.Config())
}
