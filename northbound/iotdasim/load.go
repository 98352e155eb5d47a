package iotdasim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/subgate/subgate/northbound/iotda"
	"github.com/subgate/subgate/subdevice"
)

// Bounds of the load tools. Each keeps a typo from starting a run the host
// cannot carry; the HTTP API answers 400 beyond them.
const (
	// MaxBulkAdd is the most sub-devices one AddDevices call adds: IoTDA's
	// per-gateway maximum (iotda-protocol §7).
	MaxBulkAdd = 50_000
	// MaxLoadRate is the highest CommandLoad rate, commands per second.
	MaxLoadRate = 20_000
	// MaxLoadTotal is the most commands one CommandLoad sends.
	MaxLoadTotal = 1_000_000
	// MaxLoadDuration bounds total/rate, the planned sending time.
	MaxLoadDuration = time.Hour
	// MaxLoadTimeout bounds the wait for one answer.
	MaxLoadTimeout = 2 * time.Minute
	// MaxLoadInFlight bounds commands waiting for their answer at once;
	// at the bound the sender waits for a slot, which shows as a lower
	// achieved rate (LoadStats.Rate), never as a lost command.
	MaxLoadInFlight = 50_000
	// MaxLoadTargets bounds the target list of one CommandLoad.
	MaxLoadTargets = 100_000
)

// Load command names used when the caller gives none.
const (
	loadServiceID   = "load"
	loadCommandName = "ping"
)

// ErrLoad is wrapped by every refusal of AddDevices and CommandLoad
// arguments.
var ErrLoad = errors.New("iotdasim: invalid load request")

// LoadStats is the outcome of one CommandLoad. Latencies are round trips
// platform -> gateway -> device -> gateway -> platform of the commands
// answered with result_code 0, measured from just before the command is
// published into the broker to the moment the platform goroutine matched
// the response; failure answers (which the gateway may give without the
// device) are counted but not in the percentiles.
type LoadStats struct {
	Targets int
	// Sent counts commands published; OK + Failed + TimedOut == Sent.
	Sent int
	// OK counts responses with result_code 0.
	OK int
	// Failed counts responses with a non-zero result_code and commands that
	// could not be published (FirstError says why).
	Failed int
	// TimedOut counts commands with no response within the timeout.
	TimedOut int
	// P50, P90, P99 and Max are nearest-rank percentiles of the OK round
	// trips (0 when there are none).
	P50, P90, P99, Max time.Duration
	// Elapsed runs from the first send to the last answer or timeout.
	Elapsed time.Duration
	// Rate is the achieved sending rate, commands per second.
	Rate float64
	// FirstError is the first non-timeout failure, for diagnosis.
	FirstError string
}

// MarshalJSON writes durations as milliseconds (p50_ms ...), the unit
// people read in a terminal.
func (st LoadStats) MarshalJSON() ([]byte, error) {
	ms := func(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e3 }
	return json.Marshal(struct {
		Targets    int     `json:"targets"`
		Sent       int     `json:"sent"`
		OK         int     `json:"ok"`
		Failed     int     `json:"failed"`
		TimedOut   int     `json:"timed_out"`
		P50        float64 `json:"p50_ms"`
		P90        float64 `json:"p90_ms"`
		P99        float64 `json:"p99_ms"`
		Max        float64 `json:"max_ms"`
		Elapsed    float64 `json:"elapsed_ms"`
		Rate       float64 `json:"rate"`
		FirstError string  `json:"first_error,omitempty"`
	}{st.Targets, st.Sent, st.OK, st.Failed, st.TimedOut, ms(st.P50), ms(st.P90), ms(st.P99), ms(st.Max),
		ms(st.Elapsed), math.Round(st.Rate*10) / 10, st.FirstError})
}

// checkLoad validates CommandLoad arguments.
func checkLoad(targets []string, rate float64, total int, timeout time.Duration) error {
	switch {
	case len(targets) == 0:
		return fmt.Errorf("%w: no target devices", ErrLoad)
	case len(targets) > MaxLoadTargets:
		return fmt.Errorf("%w: %d targets, at most %d", ErrLoad, len(targets), MaxLoadTargets)
	case math.IsNaN(rate) || rate <= 0 || rate > MaxLoadRate:
		return fmt.Errorf("%w: rate must be in (0, %d] commands/s", ErrLoad, MaxLoadRate)
	case total < 1 || total > MaxLoadTotal:
		return fmt.Errorf("%w: total must be in [1, %d]", ErrLoad, MaxLoadTotal)
	case float64(total)/rate > MaxLoadDuration.Seconds():
		return fmt.Errorf("%w: total/rate is over %s", ErrLoad, MaxLoadDuration)
	case timeout <= 0 || timeout > MaxLoadTimeout:
		return fmt.Errorf("%w: timeout must be in (0, %s]", ErrLoad, MaxLoadTimeout)
	}
	return nil
}

// CommandLoad sends total commands to sub-devices of gw at rate per
// second, round robin over targets (device ids), and returns what came
// back (iotda-protocol §2.6). Sending never waits for an answer: each
// command waits for its response on its own goroutine, at most
// MaxLoadInFlight at once, each bounded by timeout. It returns when every
// command has been answered or has timed out, or early when ctx ends
// (commands not yet sent are then not counted). Invalid arguments return
// stats with FirstError set and nothing sent; see the Max* bounds.
//
// Pacing and latency use the monotonic wall clock, not Config.Clock: the
// commands go over real sockets with real timers.
func (s *Sim) CommandLoad(ctx context.Context, gw string, targets []string, rate float64, total int, timeout time.Duration) LoadStats {
	return s.commandLoad(ctx, gw, targets, rate, total, timeout, loadServiceID, loadCommandName)
}

func (s *Sim) commandLoad(ctx context.Context, gw string, targets []string, rate float64, total int, timeout time.Duration,
	serviceID, commandName string) LoadStats {
	st := LoadStats{Targets: len(targets)}
	if err := checkLoad(targets, rate, total, timeout); err != nil {
		st.FirstError = err.Error()
		return st
	}
	var (
		mu   sync.Mutex // guards st and lats
		lats = make([]time.Duration, 0, min(total, 1<<16))
		wg   sync.WaitGroup
		sem  = make(chan struct{}, MaxLoadInFlight)
	)
	record := func(lat time.Duration, r iotda.CommandResponse, err error) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case err == nil && r.ResultCode == 0:
			st.OK++
			lats = append(lats, lat)
		case errors.Is(err, ErrTimeout):
			st.TimedOut++
		default:
			st.Failed++
			if st.FirstError == "" {
				if err == nil {
					err = fmt.Errorf("result_code %d: %s", r.ResultCode, clipString(string(r.Paras), 200))
				}
				st.FirstError = err.Error()
			}
		}
	}
	paras := json.RawMessage(`{}`)
	interval := time.Duration(float64(time.Second) / rate)
	start := time.Now()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	sent := 0
send:
	for sent < total {
		// Send every command that is due by now, then sleep until the next
		// one: a late wake-up catches up instead of lowering the rate.
		due := min(total, int(time.Since(start)/interval)+1)
		for ; sent < due; sent++ {
			if ctx.Err() != nil {
				break send
			}
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				break send
			}
			dev := targets[sent%len(targets)]
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				cctx, cancel := context.WithTimeout(ctx, timeout)
				defer cancel()
				t0 := time.Now()
				r, err := s.Command(cctx, gw, dev, serviceID, commandName, paras)
				record(time.Since(t0), r, err)
			}()
		}
		if sent >= total {
			break
		}
		timer.Reset(time.Until(start.Add(time.Duration(sent) * interval)))
		select {
		case <-timer.C:
		case <-ctx.Done():
			break send
		}
	}
	sendTime := time.Since(start)
	wg.Wait()
	st.Elapsed = time.Since(start)
	st.Sent = sent
	if sent > 0 && sendTime > 0 {
		st.Rate = float64(sent) / max(sendTime, interval*time.Duration(sent)).Seconds()
	}
	slices.Sort(lats)
	st.P50, st.P90, st.P99 = percentile(lats, 50), percentile(lats, 90), percentile(lats, 99)
	if len(lats) > 0 {
		st.Max = lats[len(lats)-1]
	}
	return st
}

// percentile returns the nearest-rank p-th percentile of sorted.
func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := (p*len(sorted) + 99) / 100 // ceil(p/100 * n)
	return sorted[max(rank, 1)-1]
}

func clipString(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// AddDevices adds many sub-devices from the "console" at once, for load
// tests that need a platform with tens of thousands of records. Each
// device is checked like AddDevice (NodeID and ProductID required,
// DeviceID defaults to ProductID_NodeID, ParentDeviceID to gw, ids unique)
// and the call is all or nothing: the first bad device fails it and
// nothing is added. Status may be "" or INACTIVE (a new device) or OFFLINE
// (a device the platform already saw go offline, as after an earlier
// gateway run); anything else is refused.
//
// The devices are added in chunks of at most iotda.MaxAddPerRequest, one
// list version per chunk, so a sync replays them as notifications of at
// most 50 devices (iotda-protocol §3.6). When gw is connected, one add
// notification per chunk is sent (iotda-protocol §3.4), not one per
// device. It returns the added records and the new list version.
func (s *Sim) AddDevices(gw string, devs []iotda.DeviceInfo) ([]iotda.DeviceInfo, int64, error) {
	if len(devs) == 0 || len(devs) > MaxBulkAdd {
		return nil, 0, fmt.Errorf("%w: %d devices, want 1-%d", ErrLoad, len(devs), MaxBulkAdd)
	}
	prepared := make([]iotda.DeviceInfo, len(devs))
	for i, d := range devs {
		if err := subdevice.ValidateNodeID(d.NodeID); err != nil {
			return nil, 0, fmt.Errorf("%w: devices[%d]: %w", ErrLoad, i, err)
		}
		if err := subdevice.ValidateProductID(d.ProductID); err != nil {
			return nil, 0, fmt.Errorf("%w: devices[%d]: %w", ErrLoad, i, err)
		}
		if d.DeviceID == "" {
			d.DeviceID = d.ProductID + "_" + d.NodeID
		}
		if err := subdevice.ValidateDeviceID(d.DeviceID); err != nil {
			return nil, 0, fmt.Errorf("%w: devices[%d]: %w", ErrLoad, i, err)
		}
		if len(d.ExtensionInfo) > 0 && (len(d.ExtensionInfo) > iotda.MaxExtensionInfoSize ||
			!isJSONObjectOrNull(d.ExtensionInfo) || !json.Valid(d.ExtensionInfo)) {
			return nil, 0, fmt.Errorf("%w: devices[%d]: extension_info must be a JSON object of at most %d bytes",
				ErrLoad, i, iotda.MaxExtensionInfoSize)
		}
		switch d.Status {
		case "":
			d.Status = iotda.StatusInactive
		case iotda.StatusInactive, iotda.StatusOffline:
		default:
			return nil, 0, fmt.Errorf("%w: devices[%d]: status %q, want INACTIVE or OFFLINE", ErrLoad, i, d.Status)
		}
		d.ExtensionInfo = append(json.RawMessage(nil), d.ExtensionInfo...)
		prepared[i] = d
	}

	s.mu.Lock()
	g := s.gateways[gw]
	if g == nil {
		s.mu.Unlock()
		return nil, 0, fmt.Errorf("%w: %q", ErrUnknownGateway, gw)
	}
	if err := s.checkBulkLocked(g, prepared); err != nil {
		s.mu.Unlock()
		return nil, 0, err
	}
	var o []out
	for i := 0; i < len(prepared); i += iotda.MaxAddPerRequest {
		chunk := prepared[i:min(i+iotda.MaxAddPerRequest, len(prepared))]
		g.version++
		for j := range chunk {
			if chunk[j].ParentDeviceID == "" {
				chunk[j].ParentDeviceID = g.id
			}
			g.devices[chunk[j].DeviceID] = &subDev{DeviceInfo: chunk[j], addVersion: g.version}
			s.logChangeLocked(g, change{version: g.version, add: true, dev: chunk[j]})
		}
		if g.conn != nil {
			o = append(o, s.mustDownEvent(g, g.id, iotda.ServiceSubDeviceManager, iotda.EventAddNotify, "",
				iotda.NotifyParas{Version: g.version, Devices: chunk})...)
		}
	}
	version := g.version
	s.notifyLocked()
	s.mu.Unlock()
	for _, m := range o {
		if err := s.publish(m.topic, m.payload); err != nil {
			// The devices are added; the gateway learns them by sync.
			return prepared, version, err
		}
	}
	return prepared, version, nil
}

// checkBulkLocked applies newDeviceLocked's rules to a whole batch with
// indexes, so that 50,000 devices cost O(n), not O(n²). Parents may be
// the gateway or a direct sub-device that exists before the call.
func (s *Sim) checkBulkLocked(g *gateway, devs []iotda.DeviceInfo) error {
	nodes := make(map[string]struct{}, len(g.devices)+len(devs))
	for _, d := range g.devices {
		nodes[d.NodeID] = struct{}{}
	}
	ids := make(map[string]struct{}, len(devs))
	for i, d := range devs {
		if d.ParentDeviceID != "" && d.ParentDeviceID != g.id {
			p, ok := g.devices[d.ParentDeviceID]
			if !ok || p.ParentDeviceID != g.id {
				return fmt.Errorf("%w: devices[%d]: parent must be the gateway or one of its direct sub-devices", ErrLoad, i)
			}
		}
		if _, dup := ids[d.DeviceID]; dup {
			return fmt.Errorf("%w: devices[%d]: device id %q given twice", ErrDeviceExists, i, d.DeviceID)
		}
		ids[d.DeviceID] = struct{}{}
		for _, og := range s.gateways {
			if _, ok := og.devices[d.DeviceID]; ok || og.id == d.DeviceID {
				return fmt.Errorf("%w: devices[%d]: device id %q", ErrDeviceExists, i, d.DeviceID)
			}
		}
		if _, dup := nodes[d.NodeID]; dup {
			return fmt.Errorf("%w: devices[%d]: node id %q already exists under %q", ErrDeviceExists, i, d.NodeID, g.id)
		}
		nodes[d.NodeID] = struct{}{}
	}
	return nil
}

// StatusSummary is the platform's picture of one gateway's sub-devices and
// of the status reports it received, for load tests that must not fetch
// 50,000 records to see whether a storm has settled.
type StatusSummary struct {
	Gateway   string `json:"gateway"`
	Connected bool   `json:"connected"`
	Version   int64  `json:"version"`
	Devices   int    `json:"devices"`
	// ByStatus counts sub-devices per platform status.
	ByStatus map[string]int `json:"by_status"`
	// Matching counts per status the sub-devices whose node id is
	// Prefix + n with From <= n < To (the devices a load run connected);
	// Others counts the rest. Both are empty without a range.
	Matching map[string]int `json:"matching,omitempty"`
	Others   map[string]int `json:"others,omitempty"`
	// Reports describes the sub_device_update_status messages recorded at
	// or after Since.
	Reports ReportStats `json:"reports"`
	// Violations is the count of upstream publishes over the rate cap.
	Violations int64 `json:"violations"`
	// Errors is the count of recorded protocol errors.
	Errors int `json:"errors"`
	// DroppedStatusUpdates counts status messages dropped from the
	// recording (Config.MaxRecords); Reports then misses the oldest.
	DroppedStatusUpdates int64 `json:"dropped_status_updates"`
}

// ReportStats summarises recorded status messages.
type ReportStats struct {
	Messages int `json:"messages"`
	Entries  int `json:"entries"`
	// MaxEntries is the largest device_statuses of one message (≤100 is
	// the platform's rule, iotda-protocol §3.3).
	MaxEntries int `json:"max_entries"`
	// MaxEntriesPerSecond is the most entries within any window of one
	// second (arrival times at the simulator).
	MaxEntriesPerSecond int `json:"max_entries_per_second"`
	// First and Last are the arrival times of the first and last message.
	First time.Time `json:"first,omitzero"`
	Last  time.Time `json:"last,omitzero"`
}

// NodeRange selects node ids Prefix + n, From <= n < To.
type NodeRange struct {
	Prefix   string
	From, To int
}

func (r NodeRange) has(node string) bool {
	rest, ok := strings.CutPrefix(node, r.Prefix)
	if !ok || rest == "" || (len(rest) > 1 && rest[0] == '0') {
		return false
	}
	n, err := strconv.Atoi(rest)
	return err == nil && n >= r.From && n < r.To
}

// Summary returns the StatusSummary of gw; status reports are those
// recorded at or after since (zero: all), and a non-empty r.Prefix fills
// Matching and Others. ok is false for an unknown gateway.
func (v *View) Summary(gw string, since time.Time, r NodeRange) (StatusSummary, bool) {
	g := v.s.gateways[gw]
	if g == nil {
		return StatusSummary{}, false
	}
	sum := StatusSummary{Gateway: gw, Connected: g.conn != nil, Version: g.version, Devices: len(g.devices),
		ByStatus: map[string]int{}, Violations: v.s.violations, Errors: len(v.s.rec.errors.items),
		DroppedStatusUpdates: v.s.rec.statuses.dropped}
	if r.Prefix != "" {
		sum.Matching, sum.Others = map[string]int{}, map[string]int{}
	}
	for _, d := range g.devices {
		sum.ByStatus[d.Status]++
		if r.Prefix == "" {
			continue
		}
		if r.has(d.NodeID) {
			sum.Matching[d.Status]++
		} else {
			sum.Others[d.Status]++
		}
	}
	var ups []StatusUpdate
	for _, u := range v.s.rec.statuses.items {
		if u.Gateway == gw && !u.At.Before(since) {
			ups = append(ups, u)
		}
	}
	sum.Reports = SummarizeReports(ups)
	return sum, true
}

// SummarizeReports computes ReportStats over status messages in any order.
func SummarizeReports(ups []StatusUpdate) ReportStats {
	var rs ReportStats
	if len(ups) == 0 {
		return rs
	}
	ups = slices.Clone(ups)
	sort.SliceStable(ups, func(i, j int) bool { return ups[i].At.Before(ups[j].At) })
	rs.First, rs.Last = ups[0].At, ups[len(ups)-1].At
	inWindow, lo := 0, 0
	for _, u := range ups {
		n := u.Entries()
		rs.Messages++
		rs.Entries += n
		rs.MaxEntries = max(rs.MaxEntries, n)
		// Sliding window (u.At-1s, u.At]: every window of one second that
		// holds a maximum ends at some message.
		inWindow += n
		for ups[lo].At.Add(time.Second).Compare(u.At) <= 0 {
			inWindow -= ups[lo].Entries()
			lo++
		}
		rs.MaxEntriesPerSecond = max(rs.MaxEntriesPerSecond, inWindow)
	}
	return rs
}

// LoadHandler serves the load API, under the same conventions as the
// simulator's HTTP API (JSON bodies, unknown fields refused, errors as
// {"error": "..."}):
//
//	POST /api/load/devices   {"gateway","product_id","prefix","offset","count","status"}
//	    adds count devices with node ids <prefix><offset+i> (AddDevices)
//	    -> {"added","version"}
//	POST /api/load/commands  {"gateway","prefix" | "device_ids","rate","total","timeout_ms",
//	                          "service_id","command_name"}
//	    runs CommandLoad over the given device ids, or over every
//	    sub-device of gateway whose node id or device id starts with prefix
//	    -> LoadStats as JSON (durations in ms)
//	GET  /api/load/status?gateway=&since=&prefix=&from=&to=
//	    -> StatusSummary; since is RFC 3339 or Unix milliseconds
//
// The commands call answers when the run ends; it extends its own write
// deadline to cover the run, so it may be mounted on a server with a
// short WriteTimeout. A client that goes away cancels the run.
func (s *Sim) LoadHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/load/devices", s.httpLoadDevices)
	mux.HandleFunc("POST /api/load/commands", s.httpLoadCommands)
	mux.HandleFunc("GET /api/load/status", s.httpLoadStatus)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Errorf("no route %s %s", r.Method, r.URL.Path))
	})
	return mux
}

func (s *Sim) httpLoadDevices(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Gateway   string `json:"gateway"`
		ProductID string `json:"product_id"`
		Prefix    string `json:"prefix"`
		Offset    int    `json:"offset"`
		Count     int    `json:"count"`
		Status    string `json:"status"`
	}
	if !decodeBody(w, r, &req) {
		return
	}
	switch {
	case req.Gateway == "":
		writeError(w, http.StatusBadRequest, errors.New("gateway is required"))
		return
	case req.Count < 1 || req.Count > MaxBulkAdd:
		writeError(w, http.StatusBadRequest, fmt.Errorf("count must be in [1, %d]", MaxBulkAdd))
		return
	case req.Offset < 0 || req.Offset > math.MaxInt32:
		writeError(w, http.StatusBadRequest, errors.New("offset must be a non-negative 32-bit number"))
		return
	}
	devs := make([]iotda.DeviceInfo, req.Count)
	for i := range devs {
		devs[i] = iotda.DeviceInfo{NodeID: req.Prefix + strconv.Itoa(req.Offset+i), ProductID: req.ProductID, Status: req.Status}
	}
	added, version, err := s.AddDevices(req.Gateway, devs)
	if err != nil && added == nil {
		writeError(w, loadErrStatus(err), err)
		return
	}
	rsp := map[string]any{"added": len(added), "version": version}
	if err != nil {
		rsp["notify_error"] = err.Error()
	}
	writeJSON(w, http.StatusCreated, rsp)
}

func loadErrStatus(err error) int {
	if errors.Is(err, ErrLoad) {
		return http.StatusBadRequest
	}
	return errStatus(err)
}

func (s *Sim) httpLoadCommands(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Gateway     string   `json:"gateway"`
		Prefix      string   `json:"prefix"`
		DeviceIDs   []string `json:"device_ids"`
		Rate        float64  `json:"rate"`
		Total       int      `json:"total"`
		TimeoutMS   int64    `json:"timeout_ms"`
		ServiceID   string   `json:"service_id"`
		CommandName string   `json:"command_name"`
	}
	if !decodeBody(w, r, &req) {
		return
	}
	if req.Gateway == "" {
		writeError(w, http.StatusBadRequest, errors.New("gateway is required"))
		return
	}
	if (req.Prefix == "") == (len(req.DeviceIDs) == 0) {
		writeError(w, http.StatusBadRequest, errors.New(`give exactly one of "prefix" and "device_ids"`))
		return
	}
	timeout := iotda.CommandTimeout
	if req.TimeoutMS != 0 {
		if req.TimeoutMS < 0 || req.TimeoutMS > MaxLoadTimeout.Milliseconds() {
			writeError(w, http.StatusBadRequest, fmt.Errorf("timeout_ms must be in [1, %d]", MaxLoadTimeout.Milliseconds()))
			return
		}
		timeout = time.Duration(req.TimeoutMS) * time.Millisecond
	}
	svc, name := req.ServiceID, req.CommandName
	if svc == "" {
		svc = loadServiceID
	}
	if name == "" {
		name = loadCommandName
	}
	targets := req.DeviceIDs
	if req.Prefix != "" {
		var known bool
		s.View(func(v *View) {
			g := v.s.gateways[req.Gateway]
			if known = g != nil; !known {
				return
			}
			for id, d := range g.devices {
				if strings.HasPrefix(d.NodeID, req.Prefix) || strings.HasPrefix(id, req.Prefix) {
					targets = append(targets, id)
				}
			}
		})
		if !known {
			writeError(w, http.StatusNotFound, fmt.Errorf("%w: %q", ErrUnknownGateway, req.Gateway))
			return
		}
		if len(targets) == 0 {
			writeError(w, http.StatusNotFound, fmt.Errorf("%w: no sub-device of %q starts with %q", ErrUnknownDevice, req.Gateway, req.Prefix))
			return
		}
		sort.Strings(targets)
	}
	if err := checkLoad(targets, req.Rate, req.Total, timeout); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	// The answer comes after the run: let it be written even where the
	// server's WriteTimeout is shorter.
	run := time.Duration(float64(req.Total)/req.Rate*float64(time.Second)) + timeout + 30*time.Second
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(run))
	st := s.commandLoad(r.Context(), req.Gateway, targets, req.Rate, req.Total, timeout, svc, name)
	writeJSON(w, http.StatusOK, st)
}

func (s *Sim) httpLoadStatus(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	gw := q.Get("gateway")
	var since time.Time
	if v := q.Get("since"); v != "" {
		if ms, err := strconv.ParseInt(v, 10, 64); err == nil {
			since = time.UnixMilli(ms)
		} else if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
			since = t
		} else {
			writeError(w, http.StatusBadRequest, errors.New("since must be RFC 3339 or Unix milliseconds"))
			return
		}
	}
	nr := NodeRange{Prefix: q.Get("prefix")}
	for _, f := range []struct {
		name string
		dst  *int
	}{{"from", &nr.From}, {"to", &nr.To}} {
		v := q.Get(f.name)
		if v == "" {
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, fmt.Errorf("%s must be a non-negative integer", f.name))
			return
		}
		*f.dst = n
	}
	if nr.Prefix != "" && q.Get("to") == "" {
		nr.To = math.MaxInt
	}
	var (
		sum StatusSummary
		ok  bool
	)
	s.View(func(v *View) { sum, ok = v.Summary(gw, since, nr) })
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Errorf("%w: %q", ErrUnknownGateway, gw))
		return
	}
	writeJSON(w, http.StatusOK, sum)
}
