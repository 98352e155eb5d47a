package southbound

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/subgate/subgate/southbound/frame"
	"github.com/subgate/subgate/southbound/southboundtest"
)

// wait bounds every wait for an event in these tests; reaching it fails.
const wait = 10 * time.Second

// event is one Handler call seen by fakeHandler.
type event struct {
	kind   string // "login", "frame", "logout"
	c      *Conn
	f      frame.Frame
	reason error
}

// fakeHandler records Handler calls on a channel. login and onFrame, when
// set, decide and act; by default every login succeeds with device id
// "dev-<node id>".
type fakeHandler struct {
	events  chan event
	login   func(c *Conn, f frame.Frame) error
	onFrame func(c *Conn, f frame.Frame)
}

func newFakeHandler() *fakeHandler {
	return &fakeHandler{events: make(chan event, 4096)}
}

func (h *fakeHandler) Login(c *Conn, f frame.Frame) error {
	var err error
	if h.login != nil {
		err = h.login(c, f)
	} else {
		c.SetDeviceID("dev-" + f.NodeID)
	}
	if err == nil {
		h.events <- event{kind: "login", c: c, f: f}
	}
	return err
}

func (h *fakeHandler) Frame(c *Conn, f frame.Frame) {
	h.events <- event{kind: "frame", c: c, f: f}
	if h.onFrame != nil {
		h.onFrame(c, f)
	}
}

func (h *fakeHandler) Logout(c *Conn, reason error) {
	h.events <- event{kind: "logout", c: c, reason: reason}
}

// next returns the next Handler call, failing the test after wait.
func (h *fakeHandler) next(t testing.TB) event {
	t.Helper()
	select {
	case e := <-h.events:
		return e
	case <-time.After(wait):
		t.Fatal("no handler call in time")
		return event{}
	}
}

// expect returns the next Handler call and checks its kind.
func (h *fakeHandler) expect(t testing.TB, kind string) event {
	t.Helper()
	e := h.next(t)
	if e.kind != kind {
		t.Fatalf("handler call %s (frame %v, reason %v), want %s", e.kind, e.f.Type, e.reason, kind)
	}
	return e
}

// none checks that no Handler call is pending.
func (h *fakeHandler) none(t testing.TB) {
	t.Helper()
	select {
	case e := <-h.events:
		t.Fatalf("unexpected handler call %s", e.kind)
	default:
	}
}

// secretMap is a Secrets backed by a map.
type secretMap map[string][]byte

func (m secretMap) DeviceSecret(node string) ([]byte, bool, error) {
	s, ok := m[node]
	return s, ok, nil
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// harness is a running server with its handler and registry.
type harness struct {
	s    *Server
	h    *fakeHandler
	reg  *prometheus.Registry
	logs *syncBuffer
	stop func() // stops the server and waits for Run; idempotent
}

// startServer runs a server for cfg on 127.0.0.1:0 until the test ends.
func startServer(t testing.TB, cfg Config, h *fakeHandler, secrets Secrets) *harness {
	t.Helper()
	if cfg.Listen == "" && cfg.TLSListen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.Loops == 0 {
		cfg.Loops = 2
	}
	if cfg.Workers == 0 {
		cfg.Workers = 2
	}
	if h == nil {
		h = newFakeHandler()
	}
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	reg := prometheus.NewRegistry()
	s, err := New(cfg, h, secrets, log, reg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return runServer(t, s, h, reg, logs)
}

func runServer(t testing.TB, s *Server, h *fakeHandler, reg *prometheus.Registry, logs *syncBuffer) *harness {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	select {
	case <-s.Ready():
	case err := <-done:
		cancel()
		t.Fatalf("Run: %v", err)
	case <-time.After(wait):
		cancel()
		t.Fatal("server not ready in time")
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(wait):
				t.Error("Run did not return in time")
			}
		})
	}
	t.Cleanup(stop)
	return &harness{s: s, h: h, reg: reg, logs: logs, stop: stop}
}

// dial connects a device client that is closed when the test ends.
func (hs *harness) dial(t testing.TB, o southboundtest.Options) *southboundtest.Client {
	t.Helper()
	if o.Addr == "" {
		o.Addr = hs.s.Addr().String()
	}
	if o.Codec == "" {
		o.Codec = hs.s.codec.Name()
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c, err := southboundtest.Dial(ctx, o)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// login dials and completes the hello handshake as node.
func (hs *harness) login(t testing.TB, node string) *southboundtest.Client {
	t.Helper()
	c := hs.dial(t, southboundtest.Options{NodeID: node})
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	w, err := c.Hello(ctx)
	if err != nil {
		t.Fatalf("hello %s: %v", node, err)
	}
	if w.DeviceID != "dev-"+node {
		t.Fatalf("welcome device id %q, want %q", w.DeviceID, "dev-"+node)
	}
	return c
}

// waitErr returns the next error sent on ch, failing the test after wait.
func waitErr(t testing.TB, ch <-chan error, what string) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(wait):
		t.Fatalf("%s: not called in time", what)
		return nil
	}
}

// recv returns the next frame the client receives, failing after wait.
func recv(t testing.TB, c *southboundtest.Client) frame.Frame {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	f, err := c.Recv(ctx)
	if err != nil {
		t.Fatalf("recv: %v", err)
	}
	return f
}

// recvError receives frames until an error frame and checks its code.
func recvError(t testing.TB, c *southboundtest.Client, code frame.ErrorCode) frame.Frame {
	t.Helper()
	for {
		f := recv(t, c)
		if f.Type == frame.TypeError {
			if f.Code != code {
				t.Fatalf("error frame %v (%q), want %v", f.Code, f.Reason, code)
			}
			return f
		}
	}
}

// recvEOF waits until the server closed the connection, skipping frames.
func recvEOF(t testing.TB, c *southboundtest.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	for {
		_, err := c.Recv(ctx)
		if err == nil {
			continue
		}
		var fe *frame.Error
		if errors.As(err, &fe) && !fe.Fatal {
			continue
		}
		if errors.Is(err, context.DeadlineExceeded) {
			t.Fatal("connection not closed in time")
		}
		if !errors.Is(err, io.EOF) && !isReset(err) {
			t.Fatalf("recv: %v, want EOF", err)
		}
		return
	}
}

// counter reads a counter or gauge (one metric) by gathering it from a
// registry of its own.
func counter(c prometheus.Collector) float64 {
	r := prometheus.NewRegistry()
	if err := r.Register(c); err != nil {
		panic(err)
	}
	mfs, err := r.Gather()
	if err != nil || len(mfs) != 1 || len(mfs[0].GetMetric()) != 1 {
		panic(fmt.Sprintf("gather: %v (%d families)", err, len(mfs)))
	}
	m := mfs[0].GetMetric()[0]
	if g := m.GetGauge(); g != nil {
		return g.GetValue()
	}
	return m.GetCounter().GetValue()
}

// eventually waits until cond holds, failing after wait. For states that
// have no event to wait on (counters updated after a close).
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached in time", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// atomicTime is an injectable clock the test moves by hand.
type atomicTime struct{ ns atomic.Int64 }

func (a *atomicTime) set(t time.Time)     { a.ns.Store(t.UnixNano()) }
func (a *atomicTime) add(d time.Duration) { a.ns.Add(int64(d)) }
func (a *atomicTime) get() time.Time      { return time.Unix(0, a.ns.Load()) }
