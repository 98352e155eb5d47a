package gateway

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/subgate/subgate/northbound/iotda"
	"github.com/subgate/subgate/northbound/iotdasim"
	"github.com/subgate/subgate/southbound/frame"
	"github.com/subgate/subgate/southbound/southboundtest"
)

// Issue 4 at small scale: many devices report numbered properties
// (iotdasim.CounterProperty) through an outage of the platform, at the
// platform's quota of 50 publishes/s (iotda-protocol §7).

// counterReport is report number n of a device.
func counterReport(n int64) frame.Frame {
	return frame.Frame{Type: frame.TypeProperties, Seq: uint32(n),
		Services: services("load", map[string]any{iotdasim.CounterProperty: n, "v": "0123456789abcdef"})}
}

// quotaSim starts a simulator with the default cap of 50 publishes/s and
// room for records.
func quotaSim(tb testing.TB, maxRecords int) *iotdasim.Sim {
	tb.Helper()
	cfg := iotdasim.DevConfig()
	cfg.Devices = map[string]string{testGW: testSecret}
	cfg.MaxRecords = maxRecords
	cfg.Logger = testLogger(tb)
	sim, err := iotdasim.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	if err := sim.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { sim.Close() })
	return sim
}

// connectReporters dials n binary devices, says hello and waits until the
// platform has all of them ONLINE. It returns the clients and device ids.
func connectReporters(tb testing.TB, h *harness, n int) ([]*southboundtest.Client, []string) {
	tb.Helper()
	clients := make([]*southboundtest.Client, n)
	ids := make([]string, n)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var eg errgroup.Group
	eg.SetLimit(64)
	for i := range n {
		eg.Go(func() error {
			c, err := southboundtest.Dial(ctx, southboundtest.Options{Addr: h.addr(), Codec: frame.NameBinary, NodeID: "q" + strconv.Itoa(i)})
			if err != nil {
				return err
			}
			clients[i] = c
			w, err := c.Hello(ctx)
			ids[i] = w.DeviceID
			return err
		})
	}
	err := eg.Wait()
	tb.Cleanup(func() {
		for _, c := range clients {
			if c != nil {
				c.Close()
			}
		}
	})
	if err != nil {
		tb.Fatal(err)
	}
	if err := h.sim.WaitFor(ctx, func(v *iotdasim.View) bool {
		for _, id := range ids {
			if v.Status(testGW, id) != iotda.StatusOnline {
				return false
			}
		}
		return true
	}); err != nil {
		tb.Fatalf("devices not ONLINE at the platform: %v", err)
	}
	return clients, ids
}

// ackedReporter sends numbered reports every interval, each only after
// the ack of the one before, and remembers the last acknowledged number.
type ackedReporter struct {
	c     *southboundtest.Client
	acked atomic.Int64
}

// run reports until ctx is done. An error frame or a broken connection
// fails the run: nothing may be refused in this test.
func (r *ackedReporter) run(ctx context.Context, interval time.Duration, total *atomic.Int64, progress chan<- struct{}) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for n := int64(1); ; n++ {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := r.c.Send(counterReport(n)); err != nil {
			return err
		}
		for {
			rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			f, err := r.c.Recv(rctx)
			cancel()
			if err != nil {
				return fmt.Errorf("waiting for the ack of %d: %w", n, err)
			}
			if f.Type == frame.TypeError {
				return fmt.Errorf("report %d refused: %v %s", n, f.Code, f.Reason)
			}
			if f.Type == frame.TypeAck && f.Seq == uint32(n) {
				break
			}
		}
		r.acked.Store(n)
		total.Add(1)
		select {
		case progress <- struct{}{}:
		default:
		}
	}
}

// TestOutageManyDevices: 50 devices report continuously through a
// platform outage at a cap of 50 publishes/s. Every acknowledged report
// reaches the platform, in order per device, the backlog drains while the
// live reports go on, and no second holds more than 50 publishes.
func TestOutageManyDevices(t *testing.T) {
	const (
		devices  = 50
		interval = 25 * time.Millisecond // 2,000 reports/s in all
		outage   = 4000                  // reports acked while the platform is down (~2 s)
	)
	sim := quotaSim(t, 200_000)
	cfg := testConfig(t, sim.Addr(), frame.NameBinary)
	cfg.Northbound.MaxMsgsPerSec = 50
	// The governor counts publishes on the wire (exact, see
	// governor_test.go); the margin covers jitter after the socket. Here
	// the simulator stamps arrivals inside this same busy process, often
	// under the race detector, and its reader runs late by tens of
	// milliseconds at times: far more than a network adds. 5 % (50 ms)
	// keeps this check about the gateway.
	// The gateway's own write times are checked at the cap with no
	// margin at all (wire below).
	cfg.Northbound.QuotaMargin = 0.05
	var wire wireLog
	h := startGatewayWith(t, sim, cfg, wire.attach)
	clients, ids := connectReporters(t, h, devices)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		total    atomic.Int64
		progress = make(chan struct{}, 1)
		eg       errgroup.Group
	)
	reps := make([]*ackedReporter, devices)
	for i, c := range clients {
		reps[i] = &ackedReporter{c: c}
		eg.Go(func() error { return reps[i].run(ctx, interval, &total, progress) })
	}
	stopSending := func() {
		cancel()
		if err := eg.Wait(); err != nil {
			t.Fatal(err)
		}
	}
	defer func() { cancel(); _ = eg.Wait() }()

	h.waitSim("first reports of every device", func(v *iotdasim.View) bool {
		for _, id := range ids {
			if v.PropertyCount(id) < 5 {
				return false
			}
		}
		return true
	})

	if err := sim.Stop(); err != nil {
		t.Fatal(err)
	}
	// The outage lasts while the devices get `outage` acks, about 2 s.
	base := total.Load()
	deadline := time.After(15 * time.Second)
	for total.Load() < base+outage {
		select {
		case <-progress:
		case <-deadline:
			t.Fatalf("only %d reports acked during the outage", total.Load()-base)
		}
	}
	backlog := metricValue(t, h, "subgate_outbox_messages")
	if backlog < outage/2 {
		t.Fatalf("outbox holds %v items after %d acks during the outage", backlog, outage)
	}
	atRestart := make([]int64, devices)
	for i, r := range reps {
		atRestart[i] = r.acked.Load()
	}
	if err := sim.Start(); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()

	// The backlog drains while the devices keep reporting: every report
	// acked before the restart arrives, and so do newer live reports.
	waitDelivered := func(what string, want []int64) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := sim.WaitFor(ctx, func(v *iotdasim.View) bool {
			for i, id := range ids {
				if int64(v.PropertyCount(id)) < want[i] {
					return false
				}
			}
			return true
		}); err != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
	}
	waitDelivered("the backlog", atRestart)
	drained := time.Since(restarted)
	live := 0
	for i, r := range reps {
		if r.acked.Load() > atRestart[i] {
			live++
		}
	}
	if live != devices {
		t.Fatalf("only %d of %d devices reported while the backlog drained", live, devices)
	}

	stopSending()
	final := make([]int64, devices)
	for i, r := range reps {
		final[i] = r.acked.Load()
	}
	waitDelivered("every acked report", final)

	st, err := sim.Delivery(testGW, true)
	if err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		d := st.PerDevice[id]
		if d.MaxCounter < final[i] || d.Gaps != 0 {
			t.Errorf("%s: acked up to %d, platform has up to %d with %d missing", id, final[i], d.MaxCounter, d.Gaps)
		}
	}
	if st.Gaps != 0 || st.OrderViolations != 0 || st.Unchecked != 0 || st.WithoutCounter != 0 {
		t.Errorf("delivery: %+v", st)
	}
	if st.Violations != 0 || st.MaxPublishesPerSecond > 50 {
		t.Errorf("rate: %d violations, %d publishes in one second; %s", st.Violations, st.MaxPublishesPerSecond,
			busiestSecond(sim.Publishes(testGW), 50))
	}
	// Every PUBLISH the gateway wrote, whatever its kind, went through the
	// governor: none bypasses the cap on the socket.
	wireMax, tightest := wire.stats(50)
	if wireMax > 50 {
		t.Errorf("the gateway wrote %d publishes within one second (tightest 51: %v)", wireMax, tightest)
	}
	if errs := sim.Errors(); len(errs) > 0 {
		t.Errorf("simulator errors: %v", errs)
	}
	t.Logf("acked %d reports, %d at the platform (%d duplicates from replay), backlog %v drained in %v, max %d publishes/s (written: %d, tightest 51 %v)",
		total.Load(), st.Reports, st.Duplicates, backlog, drained.Round(10*time.Millisecond), st.MaxPublishesPerSecond,
		wireMax, tightest.Round(100*time.Microsecond))
}

// busiestSecond describes the first run of more than limit publishes
// within one second: their kinds and arrival offsets, for diagnosis.
func busiestSecond(pubs []iotdasim.Publish, limit int) string {
	slices.SortFunc(pubs, func(a, b iotdasim.Publish) int { return a.At.Compare(b.At) })
	lo := 0
	for hi := range pubs {
		for pubs[hi].At.Sub(pubs[lo].At) >= time.Second {
			lo++
		}
		if hi-lo+1 <= limit {
			continue
		}
		var b strings.Builder
		fmt.Fprintf(&b, "%d publishes within %v:", hi-lo+1, pubs[hi].At.Sub(pubs[lo].At))
		for _, p := range pubs[lo : hi+1] {
			fmt.Fprintf(&b, " %s@+%dms", p.Kind, p.At.Sub(pubs[lo].At).Milliseconds())
		}
		return b.String()
	}
	return "no second over the limit"
}

// BenchmarkQuotaThroughput offers more property reports than the quota
// can carry (6,000/s from 1,000 devices) at the default cap of 50
// publishes/s, and measures at the simulator over 10 s: sub-device reports
// delivered per second, publishes per second, devices per publish (the
// packing ratio; ≤100, iotda-protocol §2.3) and rate violations. Issue 4
// asks for ≥ 4,900 reports/s with no violation. Run it with
//
//	go test -run '^$' -bench QuotaThroughput -benchtime 1x ./gateway/
func BenchmarkQuotaThroughput(b *testing.B) {
	const (
		devices = 1000
		perDev  = 6 // reports per second per device
		warmup  = 3 * time.Second
		window  = 10 * time.Second
	)
	sim := quotaSim(b, 400_000)
	cfg := testConfig(b, sim.Addr(), frame.NameBinary)
	cfg.Northbound.MaxMsgsPerSec = 50
	var wire wireLog
	h := startGatewayWith(b, sim, cfg, wire.attach)
	clients, ids := connectReporters(b, h, devices)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	// 20 senders of 50 devices each: one report per device per tick, no
	// acks asked (fire and forget keeps the load side cheap).
	const group = 50
	for g := 0; g < devices; g += group {
		wg.Go(func() {
			t := time.NewTicker(time.Second / perDev)
			defer t.Stop()
			for n := int64(1); ; n++ {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				for _, c := range clients[g : g+group] {
					f := counterReport(n)
					f.Seq = 0
					if c.Send(f) != nil {
						return
					}
				}
			}
		})
	}

	count := func() (reports, publishes int) {
		sim.View(func(v *iotdasim.View) {
			for _, id := range ids {
				reports += v.PropertyCount(id)
			}
			for _, p := range v.Publishes(testGW) {
				if p.Kind == iotda.KindBatchProperties {
					publishes++
				}
			}
		})
		return reports, publishes
	}
	waitCtx, wcancel := context.WithTimeout(context.Background(), warmup)
	<-waitCtx.Done() // let the outbox fill and the publisher reach steady state
	wcancel()

	var reports, publishes float64
	var elapsed time.Duration
	b.ReportAllocs()
	for b.Loop() {
		r0, p0 := count()
		t0 := time.Now()
		tick := time.NewTimer(window)
		<-tick.C
		r1, p1 := count()
		elapsed = time.Since(t0)
		reports, publishes = float64(r1-r0), float64(p1-p0)
	}
	b.StopTimer()
	st, err := sim.Delivery(testGW, false)
	if err != nil {
		b.Fatal(err)
	}
	sec := elapsed.Seconds()
	b.ReportMetric(reports/sec, "reports/s")
	b.ReportMetric(publishes/sec, "publishes/s")
	if publishes > 0 {
		b.ReportMetric(reports/publishes, "devices/publish")
	}
	b.ReportMetric(float64(st.Violations), "violations")
	b.ReportMetric(float64(st.MaxPublishesPerSecond), "max_publishes_in_1s")
	b.ReportMetric(st.TightestSpanMS, "tightest_span_ms")
	// The same two figures on the gateway's socket writes: the simulator
	// shares this process and stamps arrivals late at times.
	wireMax, tightest := wire.stats(50)
	b.ReportMetric(float64(wireMax), "written_max_in_1s")
	b.ReportMetric(float64(tightest)/float64(time.Millisecond), "written_tightest_ms")
	b.ReportMetric(metricValue(b, h, "subgate_outbox_messages"), "outbox_end")
	// Speed and the rate are figures to read, not asserts; order is a
	// correctness rule.
	if st.OrderViolations != 0 || st.Gaps != 0 {
		b.Errorf("order violations %d, gaps %d", st.OrderViolations, st.Gaps)
	}
	if st.Violations != 0 {
		b.Logf("rate: %s", busiestSecond(sim.Publishes(testGW), 50))
	}
}
