package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"slices"
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

const (
	testGW      = "test-gw"
	testSecret  = "test-secret-1234"
	testProduct = "testprod"
)

// testLogger logs to the test output when -v and SUBGATE_TEST_LOG are set.
func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// startSim starts an in-process IoTDA simulator on a free loopback port.
func startSim(t testing.TB, listen string) *iotdasim.Sim {
	t.Helper()
	cfg := iotdasim.DevConfig()
	cfg.Listen = listen
	cfg.Devices = map[string]string{testGW: testSecret}
	cfg.AutoAcceptAdds = true
	cfg.Logger = testLogger(t)
	sim, err := iotdasim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	return sim
}

// testConfig is a gateway config on loopback ports chosen by the kernel.
func testConfig(t testing.TB, simAddr, codec string) Config {
	t.Helper()
	env := []string{
		"SUBGATE_NORTHBOUND_SERVER=tcp://" + simAddr,
		"SUBGATE_NORTHBOUND_DEVICE_ID=" + testGW,
		"SUBGATE_NORTHBOUND_SECRET=" + testSecret,
		"SUBGATE_NORTHBOUND_MIN_BACKOFF=50ms",
		"SUBGATE_NORTHBOUND_MAX_BACKOFF=200ms",
		"SUBGATE_NORTHBOUND_MAX_MSGS_PER_SEC=1000",
		"SUBGATE_SOUTHBOUND_LISTEN=127.0.0.1:0",
		"SUBGATE_SOUTHBOUND_CODEC=" + codec,
		"SUBGATE_SUBDEVICE_DEFAULT_PRODUCT_ID=" + testProduct,
		"SUBGATE_SUBDEVICE_STATUS_DEBOUNCE=20ms",
		"SUBGATE_ADMIN_LISTEN=",
		"SUBGATE_STORE_DIR=" + t.TempDir(),
		"SUBGATE_STORE_NO_SYNC=1",
		"SUBGATE_GATEWAY_SHUTDOWN_TIMEOUT=5s",
	}
	cfg, err := LoadConfig("", env)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

type harness struct {
	t      testing.TB
	sim    *iotdasim.Sim
	gw     *Gateway
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
	cfg    Config
}

// startGateway runs a gateway until the test ends (or stop is called) and
// waits until it is ready and connected to the simulator.
func startGateway(t testing.TB, sim *iotdasim.Sim, cfg Config) *harness {
	t.Helper()
	return startGatewayWith(t, sim, cfg, nil)
}

// startGatewayWith is startGateway with a hook that runs between New and
// Run.
func startGatewayWith(t testing.TB, sim *iotdasim.Sim, cfg Config, before func(*Gateway)) *harness {
	t.Helper()
	reg := prometheus.NewRegistry()
	gw, err := New(cfg, Deps{Logger: testLogger(t), Registry: reg, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if before != nil {
		before(gw)
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
	if sim != nil {
		// The sync request is sent after the session is fully up.
		h.waitSim("gateway connected and synced", func(v *iotdasim.View) bool {
			return v.Connected(testGW) && len(v.EventsOf(iotda.EventSyncRequest)) > 0
		})
	}
	return h
}

// wireLog records the times the gateway wrote PUBLISH packets to its MQTT
// socket (governor.observe).
type wireLog struct {
	mu sync.Mutex
	at []time.Time
}

func (w *wireLog) attach(g *Gateway) { g.observeWrite = w.add }

func (w *wireLog) add(t time.Time) {
	w.mu.Lock()
	w.at = append(w.at, t)
	w.mu.Unlock()
}

// stats returns the most publishes written within any one second and the
// shortest span of limit+1 consecutive writes (0 with fewer writes).
func (w *wireLog) stats(limit int) (maxIn1s int, tightest time.Duration) {
	w.mu.Lock()
	at := slices.Clone(w.at)
	w.mu.Unlock()
	rate := iotda.MeasureRate(at, limit, time.Second)
	maxIn1s, tightest = rate.MaxInWindow, max(rate.Tightest, 0)
	return maxIn1s, tightest
}

// stop ends Run and returns its error; calling it twice is fine.
func (h *harness) stop() error {
	h.cancel()
	select {
	case err, ok := <-h.done:
		if ok {
			close(h.done)
		}
		return err
	case <-time.After(15 * time.Second):
		h.t.Fatal("gateway Run did not return within 15s")
		return nil
	}
}

func (h *harness) addr() string { return h.gw.SouthboundAddr().String() }

// waitSim waits for a condition on the simulator's state, at most 10 s.
func (h *harness) waitSim(what string, cond func(v *iotdasim.View) bool) {
	h.t.Helper()
	waitSim(h.t, h.sim, what, cond)
}

func waitSim(t testing.TB, sim *iotdasim.Sim, what string, cond func(v *iotdasim.View) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := sim.WaitFor(ctx, cond); err != nil {
		var errs []string
		sim.View(func(v *iotdasim.View) { errs = v.Errors() })
		t.Fatalf("waiting for %s: %v (simulator errors: %v)", what, err, errs)
	}
}

// dial connects a device client.
func (h *harness) dial(codec, node string) *southboundtest.Client {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := southboundtest.Dial(ctx, southboundtest.Options{Addr: h.addr(), Codec: codec, NodeID: node})
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	return c
}

// recv reads the next frame with a 10 s bound.
func recv(t testing.TB, c *southboundtest.Client) frame.Frame {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f, err := c.Recv(ctx)
	if err != nil {
		t.Fatalf("recv: %v", err)
	}
	return f
}

// recvType skips frames until one of type typ arrives.
func recvType(t testing.TB, c *southboundtest.Client, typ frame.Type) frame.Frame {
	t.Helper()
	for range 50 {
		f := recv(t, c)
		if f.Type == typ {
			return f
		}
	}
	t.Fatalf("no %s frame among 50", typ)
	return frame.Frame{}
}

// login dials a native device, says hello and waits until the platform
// knows it and has it ONLINE.
func (h *harness) login(codec, node string) (*southboundtest.Client, string) {
	h.t.Helper()
	c := h.dial(codec, node)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	w, err := c.Hello(ctx)
	if err != nil {
		h.t.Fatalf("hello %s: %v", node, err)
	}
	id := w.DeviceID
	h.waitSim(node+" ONLINE", func(v *iotdasim.View) bool { return v.Status(testGW, id) == "ONLINE" })
	return c, id
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func services(svc string, props map[string]any) json.RawMessage {
	return mustJSON([]map[string]any{{"service_id": svc, "properties": props}})
}

// checkNoLeak waits until the goroutine count is back to base.
func checkNoLeak(t testing.TB, base int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= base {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("%d goroutines left after Run returned (base %d):\n%s", n, base, buf)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func isClosed(err error) bool {
	return err != nil && (errors.Is(err, southboundtest.ErrClosed) || strings.Contains(err.Error(), "EOF") ||
		strings.Contains(err.Error(), "closed") || strings.Contains(err.Error(), "reset"))
}

var _ = fmt.Sprintf

// metricValue sums every series of a metric family in the registry.
func metricValue(t testing.TB, h *harness, name string) float64 {
	t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			}
		}
	}
	return sum
}

// waitCounter waits until a metric reaches want. Metrics have no change
// event, so this polls, bounded by a deadline.
func waitCounter(t testing.TB, h *harness, name string, want float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for metricValue(t, h, name) < want {
		if time.Now().After(deadline) {
			t.Fatalf("%s = %v, want >= %v", name, metricValue(t, h, name), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls a gateway-internal condition that has no event, bounded.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
