package iotdasim

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/subgate/subgate/northbound/iotda"
)

// Control and delivery statistics for load runs (issue 4): a scripted
// platform outage that leaves the HTTP API reachable before and after it,
// and loss and order checks of property reports that carry a per-device
// counter.
//
// HTTP routes, mounted on the simulator's HTTP API:
//
//	POST /api/control/outage   {"seconds": 60}
//	    stops the platform (MQTT listeners, connections, broker and the HTTP
//	    API itself, see Sim.Stop) and starts it again on the same addresses
//	    after the given time -> 202 OutageStatus
//	GET  /api/control/outage   -> OutageStatus
//	GET  /api/stats?gateway=[&devices=1]
//	    -> DeliveryStats; devices=1 adds the per-device figures
//
// During an outage the HTTP API is down too: clients see connection
// refused until the restart.

// Bounds of the control API.
const (
	// MaxOutage bounds one outage.
	MaxOutage = time.Hour
	// CounterProperty is the property whose integer value a load generator
	// increments by one per report of a device, starting at 1 (devicesim
	// -counter). DeliveryStats checks loss and order with it.
	CounterProperty = "n"
	// maxHolesPerDevice bounds the missing-value ranges kept per device.
	// Beyond it the lowest range is forgotten: its values stay counted as
	// gaps (DeliveryStats.Forgotten), and a late arrival of one of them is
	// counted as a duplicate.
	maxHolesPerDevice = 1024
	// restartAttempts and restartPause bound the retries of Start after
	// an outage when an address is taken meanwhile.
	restartAttempts = 50
	restartPause    = 200 * time.Millisecond
)

// ErrOutage is wrapped by refusals of Outage.
var ErrOutage = errors.New("iotdasim: outage refused")

// OutageStatus describes the current or last outage.
type OutageStatus struct {
	// Active is true from the Outage call until the platform is started
	// again (or the restart gave up).
	Active bool `json:"active"`
	// Outages counts Outage calls accepted.
	Outages int `json:"outages"`
	// Seconds is the planned length of the current or last outage.
	Seconds float64 `json:"seconds"`
	// StoppedAt and RestartedAt are the ends of the last outage (zero when
	// not reached yet). Times come from Config.Clock.
	StoppedAt   time.Time `json:"stopped_at,omitzero"`
	RestartedAt time.Time `json:"restarted_at,omitzero"`
	// Error is why the last outage did not end with a restart, if so.
	Error string `json:"error,omitempty"`
}

// DeliveryStats checks the property reports of one gateway's sub-devices
// against their counter (CounterProperty): every report of a device is
// expected to carry the next integer, starting at 1. The figures cover
// every report recorded since the simulator was created; reports dropped
// from the recording (Config.MaxRecords) before a DeliveryStats call saw
// them are counted in Unchecked, so call it at least once per MaxRecords
// reports during a long run.
type DeliveryStats struct {
	Gateway   string `json:"gateway"`
	Connected bool   `json:"connected"`
	// Devices counts sub-devices with at least one recorded report.
	Devices int `json:"devices"`
	// Reports counts property reports of those devices; Counted those with
	// a positive integer counter, WithoutCounter the others.
	Reports        int64 `json:"reports"`
	Counted        int64 `json:"counted"`
	WithoutCounter int64 `json:"without_counter"`
	// Distinct counts distinct (device, counter) values received.
	Distinct int64 `json:"distinct"`
	// Duplicates counts reports whose counter was received before
	// (at-least-once replay after a reconnect).
	Duplicates int64 `json:"duplicates"`
	// OrderViolations counts reports whose counter is new but below the
	// device's highest counter so far: they arrived after a later report.
	// DevicesOutOfOrder counts the devices with any.
	OrderViolations   int64 `json:"order_violations"`
	DevicesOutOfOrder int   `json:"devices_out_of_order"`
	// Gaps counts counter values below a device's highest one that never
	// arrived; DevicesWithGaps counts the devices with any. Values after a
	// device's highest are invisible here: compare Distinct + Gaps (the sum
	// of the highest counters) with what the devices sent.
	Gaps            int64 `json:"gaps"`
	DevicesWithGaps int   `json:"devices_with_gaps"`
	// Forgotten counts gap values no longer tracked (maxHolesPerDevice).
	Forgotten int64 `json:"forgotten"`
	// MinPerDevice and MaxPerDevice are the fewest and most reports of one
	// device.
	MinPerDevice int64 `json:"min_per_device"`
	MaxPerDevice int64 `json:"max_per_device"`
	// Unchecked counts reports of any gateway dropped from the recording
	// before they were checked.
	Unchecked int64 `json:"unchecked"`
	// Publishes counts the recorded upstream PUBLISHes of the gateway;
	// PublishesDropped counts those of every gateway dropped from the
	// recording. MaxPublishesPerSecond is the most publishes within one
	// second (the rule of Violations, iotda-protocol §7) among the
	// recorded ones.
	Publishes int `json:"publishes"`
	// BatchPublishes counts the recorded batch property reports among
	// them (Reports / BatchPublishes is the packing ratio when the
	// gateway sends no single-device property reports).
	BatchPublishes        int   `json:"batch_publishes"`
	PublishesDropped      int64 `json:"publishes_dropped"`
	MaxPublishesPerSecond int   `json:"max_publishes_per_second"`
	// TightestSpanMS is the shortest time, in milliseconds, in which cap+1
	// of the recorded publishes arrived (0 when fewer were recorded or
	// there is no cap). Under 1000 is a violation; the distance above 1000
	// is the sender's headroom against jitter on the way.
	TightestSpanMS float64 `json:"tightest_span_ms"`
	// TightestAt is the arrival of the first publish of that span and
	// TightestKinds counts the kinds of publish in it.
	TightestAt    time.Time      `json:"tightest_at,omitzero"`
	TightestKinds map[string]int `json:"tightest_kinds,omitempty"`
	// Violations counts upstream publishes over the rate cap, of every
	// gateway.
	Violations int64 `json:"violations"`
	// PerDevice is filled on request (devices=1).
	PerDevice map[string]DeviceDelivery `json:"per_device,omitempty"`
}

// DeviceDelivery is DeliveryStats for one sub-device.
type DeviceDelivery struct {
	Reports         int64 `json:"reports"`
	MaxCounter      int64 `json:"max_counter"`
	Gaps            int64 `json:"gaps"`
	Duplicates      int64 `json:"duplicates"`
	OrderViolations int64 `json:"order_violations"`
}

// control is the state of the control API that outlives a run of the
// Sim. It holds no reference to the Sim, so that the Sim can be
// collected (see controlOf).
type control struct {
	mu      sync.Mutex // guards the fields below; taken before Sim.mu
	outage  OutageStatus
	changed chan struct{} // closed and replaced when outage changes
	// seen is how many property reports (recorded plus dropped) have been
	// checked; devs holds the per-device counter state.
	seen      int64
	unchecked int64
	devs      map[string]*counterTrack
}

// counterTrack follows the counter of one device.
type counterTrack struct {
	gw        string
	reports   int64
	without   int64
	max       int64
	holes     []span // missing values below max, sorted and disjoint
	gaps      int64
	forgotten int64
	dups      int64
	reorders  int64
}

// span is an inclusive range of counter values.
type span struct{ lo, hi int64 }

// controlOf returns the Sim's control state, created on first use.
func controlOf(s *Sim) *control {
	s.ctlOnce.Do(func() {
		s.ctl = &control{changed: make(chan struct{}), devs: map[string]*counterTrack{}}
	})
	return s.ctl
}

// controlRoutes mounts the control API on mux.
func (s *Sim) controlRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /api/control/outage", s.httpOutage)
	mux.HandleFunc("GET /api/control/outage", s.httpOutageStatus)
	mux.HandleFunc("GET /api/stats", s.httpStats)
}

// Outage stops the platform now, as Stop does, and starts it again on the
// same addresses after d, from a goroutine of its own that ends with the
// restart or with Close (which also cancels the restart). It returns at
// once. A Start that fails (an address taken meanwhile) is retried a few
// times before the outage ends with OutageStatus.Error set. It fails when
// d is not in (0, MaxOutage], the Sim is not started, or an outage is
// already active.
func (s *Sim) Outage(d time.Duration) error {
	if d <= 0 || d > MaxOutage {
		return fmt.Errorf("%w: length must be in (0, %s]", ErrOutage, MaxOutage)
	}
	c := controlOf(s)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.outage.Active {
		return fmt.Errorf("%w: an outage is already active", ErrOutage)
	}
	s.mu.Lock()
	state := s.state
	s.mu.Unlock()
	switch state {
	case stateClosed:
		return ErrClosed
	case stateStarted:
	default:
		return fmt.Errorf("%w: the simulator is not started", ErrOutage)
	}
	c.outage = OutageStatus{Active: true, Outages: c.outage.Outages + 1, Seconds: d.Seconds()}
	c.notifyLocked()
	go s.runOutage(c, d)
	return nil
}

// runOutage is the goroutine of one outage.
func (s *Sim) runOutage(c *control, d time.Duration) {
	finish := func(err error) {
		c.mu.Lock()
		c.outage.Active = false
		if err != nil {
			c.outage.Error = err.Error()
		} else {
			c.outage.RestartedAt = s.now()
		}
		c.notifyLocked()
		c.mu.Unlock()
	}
	if err := s.Stop(); err != nil {
		// Stop still ended the run; the restart below brings it back.
		s.log.Warn("outage: stop reported an error", "err", err)
	}
	c.mu.Lock()
	c.outage.StoppedAt = s.now()
	c.notifyLocked()
	c.mu.Unlock()
	s.log.Info("outage: platform stopped", "dur", d)

	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.done:
		finish(ErrClosed)
		return
	}
	var err error
	for range restartAttempts {
		if err = s.Start(); err == nil || errors.Is(err, ErrClosed) {
			break
		}
		s.log.Warn("outage: restart failed; retrying", "err", err)
		select {
		case <-time.After(restartPause):
		case <-s.done:
			finish(ErrClosed)
			return
		}
	}
	if err != nil {
		s.log.Error("outage: platform not restarted", "err", err)
	} else {
		s.log.Info("outage: platform started again")
	}
	finish(err)
}

func (c *control) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// OutageStatus returns the state of the current or last outage.
func (s *Sim) OutageStatus() OutageStatus {
	c := controlOf(s)
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.outage
}

// OutageChanged returns a channel that is closed at the next change of
// OutageStatus, so that callers wait for an outage's steps without
// polling.
func (s *Sim) OutageChanged() <-chan struct{} {
	c := controlOf(s)
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

// Delivery checks the reports recorded since the last call and returns
// the DeliveryStats of gw; perDevice adds the per-device figures. It
// fails with ErrUnknownGateway for a gateway not in Config.Devices.
func (s *Sim) Delivery(gw string, perDevice bool) (DeliveryStats, error) {
	c := controlOf(s)
	c.mu.Lock()
	defer c.mu.Unlock()
	// Only copies are taken under the Sim's lock: the MQTT hook needs it
	// for every publish, and a stall there would bunch the arrival times
	// this is measuring.
	s.mu.Lock()
	if s.gateways[gw] == nil {
		s.mu.Unlock()
		return DeliveryStats{}, fmt.Errorf("%w: %q", ErrUnknownGateway, gw)
	}
	for {
		// In slices, letting the hook in between.
		fresh, more := c.takeLocked(&s.rec.properties, 4096)
		if !more {
			c.scan(fresh)
			break
		}
		s.mu.Unlock()
		c.scan(fresh)
		s.mu.Lock()
	}
	g := s.gateways[gw]
	var pubs []Publish
	for _, p := range s.rec.publishes.items {
		if p.Gateway == gw {
			pubs = append(pubs, p)
		}
	}
	st := DeliveryStats{Gateway: gw, Connected: g.conn != nil,
		PublishesDropped: s.rec.publishes.dropped, Violations: s.violations}
	s.mu.Unlock()
	st.Unchecked = c.unchecked
	if perDevice {
		st.PerDevice = map[string]DeviceDelivery{}
	}
	st.MinPerDevice = math.MaxInt64
	for id, d := range c.devs {
		if d.gw != gw {
			continue
		}
		st.Devices++
		st.Reports += d.reports
		st.Counted += d.reports - d.without
		st.WithoutCounter += d.without
		st.Distinct += d.max - d.gaps
		st.Duplicates += d.dups
		st.OrderViolations += d.reorders
		st.Gaps += d.gaps
		st.Forgotten += d.forgotten
		st.MinPerDevice = min(st.MinPerDevice, d.reports)
		st.MaxPerDevice = max(st.MaxPerDevice, d.reports)
		if d.reorders > 0 {
			st.DevicesOutOfOrder++
		}
		if d.gaps > 0 {
			st.DevicesWithGaps++
		}
		if perDevice {
			st.PerDevice[id] = DeviceDelivery{Reports: d.reports, MaxCounter: d.max, Gaps: d.gaps,
				Duplicates: d.dups, OrderViolations: d.reorders}
		}
	}
	if st.Devices == 0 {
		st.MinPerDevice = 0
	}
	for _, p := range pubs {
		if p.Kind == iotda.KindBatchProperties {
			st.BatchPublishes++
		}
	}
	slices.SortStableFunc(pubs, func(a, b Publish) int { return a.At.Compare(b.At) })
	times := make([]time.Time, len(pubs))
	for i, p := range pubs {
		times[i] = p.At
	}
	st.Publishes = len(times)
	limit := s.cfg.MaxMsgsPerSec
	rate := iotda.MeasureRate(times, limit, time.Second)
	st.MaxPublishesPerSecond = rate.MaxInWindow
	if limit > 0 && rate.Tightest >= 0 {
		i := rate.TightestAt
		st.TightestSpanMS = float64(rate.Tightest) / float64(time.Millisecond)
		st.TightestAt = times[i]
		st.TightestKinds = map[string]int{}
		for _, p := range pubs[i : i+limit+1] {
			st.TightestKinds[p.Kind.String()]++
		}
	}
	return st, nil
}

// takeLocked returns copies of at most max property reports recorded
// since the last call, and whether more wait; it counts those dropped from
// the recording before they were seen. Call with c.mu and the Sim's mu
// held.
func (c *control) takeLocked(log *boundedLog[PropertyReport], max int) ([]PropertyReport, bool) {
	total := int64(len(log.items)) + log.dropped
	start := c.seen
	if start < log.dropped {
		c.unchecked += log.dropped - start
		start = log.dropped
	}
	end := min(total, start+int64(max))
	c.seen = end
	return slices.Clone(log.items[start-log.dropped : end-log.dropped]), end < total
}

// scan checks property reports (from takeLocked). Call with c.mu held.
func (c *control) scan(reports []PropertyReport) {
	for _, p := range reports {
		d := c.devs[p.DeviceID]
		if d == nil {
			d = &counterTrack{gw: p.Gateway}
			c.devs[p.DeviceID] = d
		}
		d.reports++
		n, ok := counterOf(p.Services)
		if !ok {
			d.without++
			continue
		}
		d.observe(n)
	}
}

// counterOf returns the first positive integer CounterProperty among the
// services of a report.
func counterOf(svcs []iotda.Service) (int64, bool) {
	for _, sv := range svcs {
		var p struct {
			N json.RawMessage `json:"n"`
		}
		if json.Unmarshal(sv.Properties, &p) != nil || len(p.N) == 0 {
			continue
		}
		// A JSON integer only: a string, a fraction or an exponent fails.
		n, err := strconv.ParseInt(string(p.N), 10, 64)
		if err != nil || n < 1 {
			continue
		}
		return n, true
	}
	return 0, false
}

// observe records counter value n of one report.
func (d *counterTrack) observe(n int64) {
	if n > d.max {
		if n > d.max+1 {
			d.holes = append(d.holes, span{d.max + 1, n - 1})
			d.gaps += n - 1 - d.max
			if len(d.holes) > maxHolesPerDevice {
				d.forgotten += d.holes[0].hi - d.holes[0].lo + 1
				d.holes = slices.Delete(d.holes, 0, 1)
			}
		}
		d.max = n
		return
	}
	// Below the highest: either it fills a hole (late) or it was seen.
	i := sort.Search(len(d.holes), func(i int) bool { return d.holes[i].hi >= n })
	if i == len(d.holes) || d.holes[i].lo > n {
		d.dups++
		return
	}
	d.reorders++
	d.gaps--
	h := d.holes[i]
	switch {
	case h.lo == h.hi:
		d.holes = slices.Delete(d.holes, i, i+1)
	case n == h.lo:
		d.holes[i].lo++
	case n == h.hi:
		d.holes[i].hi--
	default:
		d.holes[i].hi = n - 1
		d.holes = slices.Insert(d.holes, i+1, span{n + 1, h.hi})
	}
}

func (s *Sim) httpOutage(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Seconds float64 `json:"seconds"`
	}
	if !decodeBody(w, r, &req) {
		return
	}
	if math.IsNaN(req.Seconds) || req.Seconds <= 0 || req.Seconds > MaxOutage.Seconds() {
		writeError(w, http.StatusBadRequest, fmt.Errorf("seconds must be in (0, %v]", MaxOutage.Seconds()))
		return
	}
	if err := s.Outage(time.Duration(req.Seconds * float64(time.Second))); err != nil {
		status := http.StatusConflict
		if errors.Is(err, ErrClosed) {
			status = http.StatusServiceUnavailable
		}
		writeError(w, status, err)
		return
	}
	// The response is written before the HTTP server stops: Stop shuts it
	// down gracefully, waiting for this request to finish.
	w.Header().Set("Connection", "close")
	writeJSON(w, http.StatusAccepted, s.OutageStatus())
}

func (s *Sim) httpOutageStatus(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.OutageStatus())
}

func (s *Sim) httpStats(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	gw := q.Get("gateway")
	if gw == "" {
		writeError(w, http.StatusBadRequest, errors.New("gateway is required"))
		return
	}
	per := false
	if v := q.Get("devices"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			writeError(w, http.StatusBadRequest, errors.New("devices must be a boolean"))
			return
		}
		per = b
	}
	st, err := s.Delivery(gw, per)
	if err != nil {
		writeError(w, errStatus(err), err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}
