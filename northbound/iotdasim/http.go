package iotdasim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/subgate/subgate/northbound/iotda"
)

// Bounds of the HTTP API.
const (
	defaultReceivedLimit = 100
	maxReceivedLimit     = 1000
)

// httpHandler serves the JSON API for people:
//
//	POST   /api/commands        {"gateway","device_id","service_id","command_name","paras","timeout_ms"}
//	POST   /api/properties/set  {"gateway","device_id","services":[...],"timeout_ms"}
//	POST   /api/properties/get  {"gateway","device_id","service_id","timeout_ms"}
//	POST   /api/messages        {"gateway","device_id","content"}   content: JSON string or object
//	POST   /api/events          {"gateway","device_id","service_id","event_type","paras"}
//	GET    /api/devices?gateway=
//	POST   /api/devices         {"gateway", "node_id","product_id","device_id","name",...}
//	DELETE /api/devices/{id}[?gateway=]
//	GET    /api/received?gateway=&limit=
//	GET    /api/errors
//
// Errors are {"error": "..."} with a 4xx status (504 when the device did
// not answer in time).
func (s *Sim) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/commands", s.httpCommand)
	mux.HandleFunc("POST /api/properties/set", s.httpPropertiesSet)
	mux.HandleFunc("POST /api/properties/get", s.httpPropertiesGet)
	mux.HandleFunc("POST /api/messages", s.httpMessage)
	mux.HandleFunc("POST /api/events", s.httpEvent)
	mux.HandleFunc("GET /api/devices", s.httpDevices)
	mux.HandleFunc("POST /api/devices", s.httpAddDevice)
	mux.HandleFunc("DELETE /api/devices/{id}", s.httpDeleteDevice)
	mux.HandleFunc("GET /api/received", s.httpReceived)
	mux.HandleFunc("GET /api/errors", s.httpErrors)
	s.controlRoutes(mux) // control.go: outage, delivery stats
	mux.Handle("/api/load/", s.LoadHandler())
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Errorf("no route %s %s", r.Method, r.URL.Path))
	})
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, err error) {
	writeJSON(w, status, map[string]string{"error": err.Error()})
}

// errStatus maps downstream API errors to HTTP statuses.
func errStatus(err error) int {
	switch {
	case errors.Is(err, ErrUnknownGateway), errors.Is(err, ErrUnknownDevice):
		return http.StatusNotFound
	case errors.Is(err, ErrNotConnected), errors.Is(err, ErrDeviceExists):
		return http.StatusConflict
	case errors.Is(err, ErrTimeout):
		return http.StatusGatewayTimeout
	case errors.Is(err, ErrClosed), errors.Is(err, ErrNotStarted), errors.Is(err, ErrStopped):
		return http.StatusServiceUnavailable
	}
	return http.StatusBadRequest
}

// decodeBody reads one JSON object of at most DefaultHTTPBodyLimit bytes,
// refusing unknown fields.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	r.Body = http.MaxBytesReader(w, r.Body, DefaultHTTPBodyLimit)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("request body: %w", err))
		return false
	}
	if dec.More() {
		writeError(w, http.StatusBadRequest, errors.New("request body: trailing data"))
		return false
	}
	return true
}

// requestCtx bounds a downstream wait by timeout_ms, if given, and by the
// client's connection.
func requestCtx(r *http.Request, timeoutMS int64) (context.Context, context.CancelFunc) {
	if timeoutMS > 0 {
		return context.WithTimeout(r.Context(), time.Duration(timeoutMS)*time.Millisecond)
	}
	return context.WithCancel(r.Context())
}

type target struct {
	Gateway  string `json:"gateway"`
	DeviceID string `json:"device_id"`
}

// checker is a request body that validates itself.
type checker interface{ check() error }

// decodeTarget decodes a request body and checks it, answering 400 when
// either fails.
func decodeTarget(w http.ResponseWriter, r *http.Request, req checker) bool {
	if !decodeBody(w, r, req) {
		return false
	}
	if err := req.check(); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return false
	}
	return true
}

// reply answers a downstream request's result: the response as JSON, or
// the error with its status.
func reply(w http.ResponseWriter, rsp any, err error) {
	if err != nil {
		writeError(w, errStatus(err), err)
		return
	}
	writeJSON(w, http.StatusOK, rsp)
}

func (t target) check() error {
	if t.Gateway == "" {
		return errors.New("gateway is required")
	}
	return nil
}

func (s *Sim) httpCommand(w http.ResponseWriter, r *http.Request) {
	var req struct {
		target
		ServiceID   string          `json:"service_id"`
		CommandName string          `json:"command_name"`
		Paras       json.RawMessage `json:"paras"`
		TimeoutMS   int64           `json:"timeout_ms"`
	}
	if !decodeTarget(w, r, &req) {
		return
	}
	if req.ServiceID == "" || req.CommandName == "" {
		writeError(w, http.StatusBadRequest, errors.New("service_id and command_name are required"))
		return
	}
	ctx, cancel := requestCtx(r, req.TimeoutMS)
	defer cancel()
	rsp, err := s.Command(ctx, req.Gateway, req.DeviceID, req.ServiceID, req.CommandName, req.Paras)
	reply(w, rsp, err)
}

func (s *Sim) httpPropertiesSet(w http.ResponseWriter, r *http.Request) {
	var req struct {
		target
		Services  []iotda.Service `json:"services"`
		TimeoutMS int64           `json:"timeout_ms"`
	}
	if !decodeTarget(w, r, &req) {
		return
	}
	if len(req.Services) == 0 {
		writeError(w, http.StatusBadRequest, errors.New("services are required"))
		return
	}
	ctx, cancel := requestCtx(r, req.TimeoutMS)
	defer cancel()
	rsp, err := s.SetProperties(ctx, req.Gateway, req.DeviceID, req.Services)
	reply(w, rsp, err)
}

func (s *Sim) httpPropertiesGet(w http.ResponseWriter, r *http.Request) {
	var req struct {
		target
		ServiceID string `json:"service_id"`
		TimeoutMS int64  `json:"timeout_ms"`
	}
	if !decodeTarget(w, r, &req) {
		return
	}
	ctx, cancel := requestCtx(r, req.TimeoutMS)
	defer cancel()
	rsp, err := s.GetProperties(ctx, req.Gateway, req.DeviceID, req.ServiceID)
	reply(w, rsp, err)
}

func (s *Sim) httpMessage(w http.ResponseWriter, r *http.Request) {
	var req struct {
		target
		Content json.RawMessage `json:"content"`
	}
	if !decodeTarget(w, r, &req) {
		return
	}
	if err := s.SendMessage(req.Gateway, req.DeviceID, req.Content); err != nil {
		writeError(w, errStatus(err), err)
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]string{"status": "sent"})
}

func (s *Sim) httpEvent(w http.ResponseWriter, r *http.Request) {
	var req struct {
		target
		ServiceID string          `json:"service_id"`
		EventType string          `json:"event_type"`
		Paras     json.RawMessage `json:"paras"`
	}
	if !decodeTarget(w, r, &req) {
		return
	}
	if req.ServiceID == "" || req.EventType == "" {
		writeError(w, http.StatusBadRequest, errors.New("service_id and event_type are required"))
		return
	}
	var paras any
	if p := bytes.TrimSpace(req.Paras); len(p) > 0 {
		if p[0] != '{' {
			writeError(w, http.StatusBadRequest, errors.New("paras must be an object"))
			return
		}
		paras = json.RawMessage(p)
	}
	if err := s.SendEvent(req.Gateway, req.DeviceID, req.ServiceID, req.EventType, paras); err != nil {
		writeError(w, errStatus(err), err)
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]string{"status": "sent"})
}

func (s *Sim) httpDevices(w http.ResponseWriter, r *http.Request) {
	gw := r.URL.Query().Get("gateway")
	var (
		devs  []iotda.DeviceInfo
		ver   int64
		known bool
		conn  bool
	)
	s.View(func(v *View) {
		_, known = v.s.gateways[gw]
		devs, ver, conn = v.Devices(gw), v.Version(gw), v.Connected(gw)
	})
	if !known {
		writeError(w, http.StatusNotFound, fmt.Errorf("%w: %q", ErrUnknownGateway, gw))
		return
	}
	if devs == nil {
		devs = []iotda.DeviceInfo{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"gateway": gw, "connected": conn, "version": ver, "devices": devs})
}

func (s *Sim) httpAddDevice(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Gateway string `json:"gateway"`
		iotda.DeviceInfo
	}
	if !decodeBody(w, r, &req) {
		return
	}
	if req.Gateway == "" {
		writeError(w, http.StatusBadRequest, errors.New("gateway is required"))
		return
	}
	info, err := s.AddDevice(req.Gateway, req.DeviceInfo)
	if err != nil {
		writeError(w, errStatus(err), err)
		return
	}
	writeJSON(w, http.StatusCreated, info)
}

func (s *Sim) httpDeleteDevice(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	gw := r.URL.Query().Get("gateway")
	if gw == "" {
		var ok bool
		if gw, ok = s.DeviceGateway(id); !ok {
			writeError(w, http.StatusNotFound, fmt.Errorf("%w: %q", ErrUnknownDevice, id))
			return
		}
	}
	if err := s.DeleteDevice(gw, id); err != nil {
		writeError(w, errStatus(err), err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"deleted": id, "gateway": gw})
}

// tail returns the last n items.
func tail[T any](items []T, n int) []T {
	if len(items) > n {
		return items[len(items)-n:]
	}
	return items
}

func (s *Sim) httpReceived(w http.ResponseWriter, r *http.Request) {
	gw := r.URL.Query().Get("gateway")
	limit := defaultReceivedLimit
	if l := r.URL.Query().Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n <= 0 || n > maxReceivedLimit {
			writeError(w, http.StatusBadRequest, fmt.Errorf("limit must be 1-%d", maxReceivedLimit))
			return
		}
		limit = n
	}
	type msg struct {
		Message
		Content string `json:"content"`
	}
	var (
		msgs   []msg
		props  []PropertyReport
		events []UpEvent
		status []StatusUpdate
		known  bool
	)
	s.View(func(v *View) {
		_, known = v.s.gateways[gw]
		for _, m := range tail(filter(v.s.rec.messages.items, func(m Message) bool { return m.Gateway == gw }), limit) {
			msgs = append(msgs, msg{Message: m, Content: string(m.Content)})
		}
		props = slicesClone(tail(filter(v.s.rec.properties.items, func(p PropertyReport) bool { return p.Gateway == gw }), limit))
		events = slicesClone(tail(filter(v.s.rec.events.items, func(e UpEvent) bool { return e.Gateway == gw }), limit))
		status = slicesClone(tail(filter(v.s.rec.statuses.items, func(u StatusUpdate) bool { return u.Gateway == gw }), limit))
	})
	if !known {
		writeError(w, http.StatusNotFound, fmt.Errorf("%w: %q", ErrUnknownGateway, gw))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"messages": nonNil(msgs), "properties": nonNil(props), "events": nonNil(events), "status_updates": nonNil(status),
	})
}

func (s *Sim) httpErrors(w http.ResponseWriter, _ *http.Request) {
	var (
		errs []string
		viol int64
		drop map[string]int64
	)
	s.View(func(v *View) { errs, viol, drop = v.Errors(), v.Violations(), v.Dropped() })
	writeJSON(w, http.StatusOK, map[string]any{"errors": nonNil(errs), "violations": viol, "dropped": drop})
}

func filter[T any](items []T, keep func(T) bool) []T {
	var out []T
	for _, it := range items {
		if keep(it) {
			out = append(out, it)
		}
	}
	return out
}

func slicesClone[T any](s []T) []T { return append([]T(nil), s...) }

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
