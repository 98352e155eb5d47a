package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/subgate/subgate/northbound/iotda"
	"github.com/subgate/subgate/southbound"
	"github.com/subgate/subgate/southbound/frame"
	"github.com/subgate/subgate/subdevice"
)

// statusReporter turns connection changes into sub_device_update_status
// reports (iotda §3.3) without storms: changes are collected for
// subdevice.status_debounce, only the last state per device counts, a device
// whose state the platform already has is skipped, ONLINE goes before
// OFFLINE, reports carry ≤100 entries, and no one-second window holds more
// entries than subdevice.status_rate.
type statusReporter struct {
	g      *Gateway
	kickCh chan struct{}

	// mu guards the following fields.
	mu       sync.Mutex
	want     map[string]subdevice.Status // pending changes
	reported map[string]subdevice.Status // what the platform was told on this connection
	retries  map[string]int
	byEvent  map[string][]iotda.DeviceStatus
	rate     float64 // entries per second (subdevice.status_rate)
	spent    []spend // entries sent in the last second, oldest first
}

func newStatusReporter(g *Gateway) *statusReporter {
	return &statusReporter{
		g:        g,
		kickCh:   make(chan struct{}, 1),
		want:     make(map[string]subdevice.Status),
		reported: make(map[string]subdevice.Status),
		retries:  make(map[string]int),
		byEvent:  make(map[string][]iotda.DeviceStatus),
		rate:     g.cfg.Subdevice.StatusRate,
	}
}

func (r *statusReporter) set(id string, st subdevice.Status) {
	r.mu.Lock()
	r.want[id] = st
	r.mu.Unlock()
}

func (r *statusReporter) forget(id string) {
	r.mu.Lock()
	delete(r.want, id)
	delete(r.reported, id)
	delete(r.retries, id)
	r.mu.Unlock()
}

func (r *statusReporter) kick() {
	select {
	case r.kickCh <- struct{}{}:
	default:
	}
}

// reReportAll queues the real state of every known sub-device (iotda
// §3.12 step 3). With forget set (after a reconnect: reports may have been
// lost with the connection) it also forgets what the platform was told, so
// every state is sent again.
func (r *statusReporter) reReportAll(forget bool) {
	g := r.g
	all := g.devs.All()
	if forget {
		r.mu.Lock()
		// "" marks the platform's state as unknown: every device is
		// reported again, whatever it confirmed before (iotda §3.12 step 4).
		r.reported = make(map[string]subdevice.Status, len(all))
		for _, d := range all {
			r.reported[d.DeviceID] = ""
		}
		r.mu.Unlock()
	}
	// A device's state is read under mu, where set() also runs: Login and
	// Logout change the live table before they call set(), so a device
	// that connects while this runs is either seen online here or its
	// ONLINE comes after this entry and replaces it. (Read before taking
	// mu, an OFFLINE read just before the device connected could replace
	// its ONLINE that was already sent, and the platform would show a
	// connected device OFFLINE.) Chunks keep set() callers, which are
	// southbound workers, from waiting for a whole large registry.
	const chunk = 4096
	for len(all) > 0 {
		n := min(len(all), chunk)
		r.mu.Lock()
		for _, d := range all[:n] {
			if _, pending := r.want[d.DeviceID]; pending {
				continue
			}
			st := subdevice.Offline
			if _, online := g.connByDevice(d.DeviceID); online {
				st = subdevice.Online
			}
			r.want[d.DeviceID] = st
		}
		r.mu.Unlock()
		all = all[n:]
	}
	r.kick()
}

func (r *statusReporter) pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.want)
}

func (r *statusReporter) run(ctx context.Context) error {
	d := max(r.g.cfg.Subdevice.StatusDebounce, 50*time.Millisecond)
	t := time.NewTicker(d)
	defer t.Stop()
	// pace fires when the pacing window frees room for entries that are
	// waiting, so a backlog goes out at the full rate, not per tick.
	pace := time.NewTimer(time.Hour)
	pace.Stop()
	defer pace.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-r.kickCh:
		case <-pace.C:
		}
		r.flush(false, nil)
		if wait := r.nextRoom(); wait > 0 {
			pace.Reset(wait)
		}
	}
}

// nextRoom returns how long until the pacing window has room again, when
// entries are waiting for it; 0 when nothing waits.
func (r *statusReporter) nextRoom() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.want) == 0 || len(r.spent) == 0 {
		return 0
	}
	return max(time.Millisecond, r.spent[0].at.Add(statusWindow).Sub(r.g.now()))
}

// take removes the pending entries that the platform does not already
// have, ONLINE ones first, at most what the pacing allows now. What the
// platform has is what it was told on this connection (reported) or, for a
// device not reported yet, the status it last confirmed (the record's
// Status, from status responses and notifications, kept across restarts):
// a reconnect storm then reports only real changes (issue 5).
func (r *statusReporter) take(limited bool) []iotda.DeviceStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.g.now()
	budget := len(r.want)
	if limited {
		budget = r.allowance(now)
	}
	var out []iotda.DeviceStatus
	for _, pass := range []subdevice.Status{subdevice.Online, subdevice.Offline} {
		for id, st := range r.want {
			if len(out) >= budget {
				break
			}
			if st != pass {
				continue
			}
			delete(r.want, id)
			if rep, sent := r.reported[id]; sent && rep == st {
				continue
			}
			d, known := r.g.devs.ByID(id)
			if !known {
				continue
			}
			if _, sent := r.reported[id]; !sent && d.Status == st {
				continue
			}
			r.reported[id] = st
			out = append(out, iotda.DeviceStatus{DeviceID: id, Status: string(st)})
			// Until the PUBACK, the platform's state is unknown: a restart
			// before it must report this device again.
			if d, ok := r.g.devs.Update(id, func(d *subdevice.Device) { d.Status = "" }); ok {
				r.g.persistAsync(d)
			}
		}
	}
	if limited && len(out) > 0 {
		r.spent = append(r.spent, spend{at: now, n: len(out)})
	}
	r.want = shrink(r.want)
	return out
}

// statusWindow is the pacing window: a second plus a margin for the time
// an entry spends in the publish queue, which can bunch arrivals.
const statusWindow = 1100 * time.Millisecond

// spend is a number of status entries sent at a time.
type spend struct {
	at time.Time
	n  int
}

// allowance is how many entries may go now so that no one-second window
// holds more than the rate (a sliding window, like the platform's count).
func (r *statusReporter) allowance(now time.Time) int {
	i := 0
	used := 0
	for _, s := range r.spent {
		if now.Sub(s.at) >= statusWindow {
			i++
			continue
		}
		used += s.n
	}
	r.spent = r.spent[i:]
	return max(0, int(r.rate)-used)
}

// flush publishes pending changes in reports of ≤100 entries. With
// unlimited set (shutdown) it ignores the entry pacing, and wg counts the
// publishes until their PUBACK.
func (r *statusReporter) flush(unlimited bool, wg *sync.WaitGroup) {
	g := r.g
	if !g.north.Connected() {
		return
	}
	entries := r.take(!unlimited)
	for len(entries) > 0 {
		n := min(len(entries), iotda.MaxStatusesPerMessage)
		batch := entries[:n:n]
		entries = entries[n:]
		if wg != nil {
			wg.Add(1)
		}
		id := g.publishEventDone(ClassManagement, "status", "", iotda.ServiceSubDeviceManager, iotda.EventUpdateStatus,
			iotda.UpdateStatusParas{DeviceStatuses: batch}, func(err error) {
				if wg != nil {
					defer wg.Done()
				}
				if err != nil {
					r.requeue(batch)
					return
				}
				g.m.statusReports.Inc()
				g.m.statusEntries.Add(float64(len(batch)))
				// The platform has the message: its state is what was sent,
				// unless its response refuses an entry (response). Kept in
				// the records so that a restart reports only changes.
				for _, e := range batch {
					st := subdevice.Status(e.Status)
					if d, ok := g.devs.Update(e.DeviceID, func(d *subdevice.Device) { d.Status = st }); ok {
						g.persistAsync(d)
					}
				}
				r.delivered(batch)
			})
		r.mu.Lock()
		r.byEvent[id] = batch
		if len(r.byEvent) > 10000 {
			// Responses that never came: forget the oldest half.
			i := 0
			for k := range r.byEvent {
				if i%2 == 0 {
					delete(r.byEvent, k)
				}
				i++
			}
		}
		r.mu.Unlock()
	}
}

// delivered forgets the entries of a PUBACKed report: from now on the
// record's Status is the baseline, and the map stays small (about 70 bytes
// per entry otherwise, docs/memory.md).
func (r *statusReporter) delivered(batch []iotda.DeviceStatus) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range batch {
		if r.reported[e.DeviceID] == subdevice.Status(e.Status) {
			delete(r.reported, e.DeviceID)
		}
	}
	r.reported = shrink(r.reported)
}

// shrink replaces an empty map that grew large: Go maps never give their
// buckets back.
func shrink(m map[string]subdevice.Status) map[string]subdevice.Status {
	if len(m) == 0 {
		return make(map[string]subdevice.Status)
	}
	return m
}

// requeue puts back entries whose report was not delivered, unless a newer
// change is already pending.
func (r *statusReporter) requeue(batch []iotda.DeviceStatus) {
	r.mu.Lock()
	for _, e := range batch {
		if r.reported[e.DeviceID] == subdevice.Status(e.Status) {
			delete(r.reported, e.DeviceID)
		}
		if _, newer := r.want[e.DeviceID]; !newer {
			r.want[e.DeviceID] = subdevice.Status(e.Status)
		}
	}
	r.mu.Unlock()
}

// response applies sub_device_update_status_response: confirmed states go
// into the records, failed entries are logged and retried up to 3 times.
func (r *statusReporter) response(eventID string, p iotda.UpdateStatusResponseParas) {
	g := r.g
	r.mu.Lock()
	delete(r.byEvent, eventID)
	var retry []iotda.DeviceStatus
	for _, f := range p.FailedDevices {
		st, ok := r.reported[f.DeviceID]
		if !ok {
			continue
		}
		delete(r.reported, f.DeviceID)
		r.retries[f.DeviceID]++
		if r.retries[f.DeviceID] <= 3 {
			retry = append(retry, iotda.DeviceStatus{DeviceID: f.DeviceID, Status: string(st)})
		} else {
			delete(r.retries, f.DeviceID)
		}
	}
	for _, s := range p.SuccessfulDevices {
		delete(r.retries, s.DeviceID)
	}
	for _, e := range retry {
		if _, newer := r.want[e.DeviceID]; !newer {
			r.want[e.DeviceID] = subdevice.Status(e.Status)
		}
	}
	r.mu.Unlock()
	for _, f := range p.FailedDevices {
		// The platform's state of this device is unknown now.
		g.devs.Update(f.DeviceID, func(d *subdevice.Device) { d.Status = "" })
		g.m.statusFailed.Inc()
		g.log.Warn("platform refused a status update", "component", "gateway", "device_id", f.DeviceID,
			"error_code", f.ErrorCode, "error_msg", f.ErrorMsg)
	}
	for _, s := range p.SuccessfulDevices {
		st := subdevice.Status(s.Status)
		if !st.Valid() {
			continue
		}
		if d, ok := g.devs.Update(s.DeviceID, func(d *subdevice.Device) { d.Status = st }); ok {
			g.persistAsync(d)
		}
	}
}

// flushNow reports pending changes at once and waits for their PUBACKs,
// at most timeout (shutdown).
func (r *statusReporter) flushNow(timeout time.Duration) {
	var wg sync.WaitGroup
	r.flush(true, &wg)
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		r.g.log.Warn("status reports not confirmed before the shutdown timeout", "component", "gateway")
	}
}

// pendingReg is a registration the platform has not answered yet.
type pendingReg struct {
	node, deviceID, product string
	fw, sw                  string // versions from the hello
	eventID                 string
	sent                    time.Time
}

// connOfPending returns the live connection waiting on a registration.
func (g *Gateway) connOfPending(p *pendingReg) (*southbound.Conn, bool) {
	return g.connByDevice(p.deviceID)
}

type delReq struct {
	deviceID string
	done     chan error // may be nil
}

// registrar owns gateway-side add and delete requests (iotda §3.7, §3.8),
// applies the platform's sub-device notifications (§3.4, §3.5) and writes
// record changes to the store. All of this runs on its own goroutine; other
// goroutines hand work over through bounded channels.
type registrar struct {
	g       *Gateway
	addQ    chan string // node ids
	delQ    chan delReq
	events  chan iotda.Event
	persist chan string // device ids whose record changed

	// mu guards the following fields.
	mu      sync.Mutex
	pending map[string]*pendingReg // node id ->
	dels    map[string][]delReq    // event id ->
}

func newRegistrar(g *Gateway) *registrar {
	return &registrar{
		g:       g,
		addQ:    make(chan string, 65536),
		delQ:    make(chan delReq, 1024),
		events:  make(chan iotda.Event, 1024),
		persist: make(chan string, 16384),
		pending: make(map[string]*pendingReg),
		dels:    make(map[string][]delReq),
	}
}

var errQueueFull = errors.New("gateway: queue full")

// attach binds c to the registration of node: the one already pending, or
// a new add request. It reports registered (and binds nothing) when the
// device was confirmed since the caller looked it up. Binding under mu,
// where confirmed looks the connection up, means a confirmation either
// finds c or happened before, and then the record is there.
func (r *registrar) attach(c *southbound.Conn, node, deviceID, product string, hello frame.Frame) (subdevice.Device, bool, error) {
	g := r.g
	r.mu.Lock()
	if d, ok := g.devs.ByNode(node); ok {
		r.mu.Unlock()
		return d, true, nil
	}
	if p, ok := r.pending[node]; ok {
		g.bind(c, p.deviceID)
		r.mu.Unlock()
		return subdevice.Device{}, false, nil
	}
	r.pending[node] = &pendingReg{node: node, deviceID: deviceID, product: product, fw: hello.FwVersion, sw: hello.SwVersion}
	g.bind(c, deviceID)
	r.mu.Unlock()
	select {
	case r.addQ <- node:
		return subdevice.Device{}, false, nil
	default:
		r.mu.Lock()
		delete(r.pending, node)
		r.mu.Unlock()
		g.unbind(c, deviceID)
		r.g.hit("registration_queue", "node_id", node)
		return subdevice.Device{}, false, errQueueFull
	}
}

func (r *registrar) pendingCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pending)
}

// requestDelete queues a delete request; done (optional) gets the result.
func (r *registrar) requestDelete(deviceID string, done chan error) {
	select {
	case r.delQ <- delReq{deviceID: deviceID, done: done}:
	default:
		if done != nil {
			done <- errQueueFull
		}
	}
}

// event hands a $sub_device_manager event to the registrar goroutine.
func (r *registrar) event(ev iotda.Event) {
	select {
	case r.events <- ev:
	default:
		r.g.hit("event_queue", "event", ev.EventType, "note", "event dropped; the next sync repairs it")
	}
}

// addTimeout is how long an add request may wait for its answer; the
// platform answers within 30 s (iotda §3.7).
const addTimeout = 35 * time.Second

func (r *registrar) run(ctx context.Context) error {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var adds []string
	var dels []delReq
	for {
		select {
		case <-ctx.Done():
			r.mu.Lock()
			for _, ws := range r.dels {
				for _, w := range ws {
					if w.done != nil {
						w.done <- errors.New("gateway shutting down")
					}
				}
			}
			r.mu.Unlock()
			return nil
		case n := <-r.addQ:
			adds = append(adds, n)
			if len(adds) >= iotda.MaxAddPerRequest {
				adds = r.sendAdds(adds)
			}
		case d := <-r.delQ:
			dels = append(dels, d)
			if len(dels) >= iotda.MaxDeletePerRequest {
				dels = r.sendDeletes(dels)
			}
		case ev := <-r.events:
			r.apply(ctx, ev)
		case <-tick.C:
			adds = r.sendAdds(adds)
			dels = r.sendDeletes(dels)
			r.expire()
		}
	}
}

func (r *registrar) persistBatch(ctx context.Context, first string) {
	// Record writes must land even while the gateway stops (the statuses
	// reported at shutdown are the next start's baseline): the write gets
	// its own bound instead of the run's context.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	batch := map[string]bool{first: true}
	for len(batch) < 1000 {
		select {
		case id := <-r.persist:
			batch[id] = true
			continue
		default:
		}
		break
	}
	devs := make([]subdevice.Device, 0, len(batch))
	for id := range batch {
		// Write the registry's current copy, not a stale snapshot.
		if d, ok := r.g.devs.ByID(id); ok {
			devs = append(devs, d)
		}
	}
	if len(devs) == 0 {
		return
	}
	if err := r.g.st.PutDevices(ctx, devs); err != nil {
		r.g.log.Warn("saving sub-device records failed", "component", "gateway", "err", err, "n", len(devs))
	}
}

// persistLoop writes changed records in batches, on its own goroutine so
// that slow commits never hold up registrations or notifications. At the
// end it writes what is still queued (the shutdown's OFFLINE statuses are
// the next start's baseline).
func (r *registrar) persistLoop(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			r.drainPersist()
			return nil
		case id := <-r.persist:
			r.persistBatch(ctx, id)
		}
	}
}

func (r *registrar) drainPersist() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for {
		select {
		case id := <-r.persist:
			r.persistBatch(ctx, id)
		default:
			return
		}
	}
}

func (r *registrar) sendAdds(nodes []string) []string {
	g := r.g
	if len(nodes) == 0 {
		return nodes[:0]
	}
	if !g.north.Connected() {
		return nodes // keep them until the platform is back
	}
	var devs []iotda.AddDevice
	r.mu.Lock()
	var regs []*pendingReg
	for _, n := range nodes {
		p, ok := r.pending[n]
		if !ok || p.eventID != "" {
			continue
		}
		regs = append(regs, p)
		devs = append(devs, iotda.AddDevice{
			NodeID: p.node, ProductID: p.product, DeviceID: p.deviceID, ParentDeviceID: g.gw,
			Name: p.node, Description: "registered by subgate",
		})
	}
	r.mu.Unlock()
	if len(devs) == 0 {
		return nodes[:0]
	}
	id := g.publishEventDone(ClassManagement, "add", "", iotda.ServiceSubDeviceManager, iotda.EventAddRequest,
		iotda.AddRequestParas{Devices: devs}, func(err error) {
			if err != nil {
				g.log.Warn("add request not delivered; will retry", "component", "gateway", "err", err, "n", len(devs))
				r.mu.Lock()
				for _, p := range regs {
					p.eventID = ""
				}
				r.mu.Unlock()
				for _, p := range regs {
					select {
					case r.addQ <- p.node:
					default:
					}
				}
			}
		})
	now := g.now()
	r.mu.Lock()
	for _, p := range regs {
		p.eventID, p.sent = id, now
	}
	r.mu.Unlock()
	g.m.adds.WithLabelValues("requested").Add(float64(len(devs)))
	return nodes[:0]
}

func (r *registrar) sendDeletes(reqs []delReq) []delReq {
	g := r.g
	if len(reqs) == 0 {
		return reqs[:0]
	}
	if !g.north.Connected() {
		for _, d := range reqs {
			if d.done != nil {
				d.done <- errors.New("the platform is not connected")
			}
		}
		return reqs[:0]
	}
	ids := make([]string, 0, len(reqs))
	seen := map[string]bool{}
	for _, d := range reqs {
		if !seen[d.deviceID] {
			seen[d.deviceID] = true
			ids = append(ids, d.deviceID)
		}
	}
	id := g.publishEventDone(ClassManagement, "delete", "", iotda.ServiceSubDeviceManager, iotda.EventDeleteRequest,
		iotda.DeleteRequestParas{Devices: ids}, func(err error) {
			if err != nil {
				r.finishDeletes(r.takeDels(""), nil, err)
			}
		})
	r.mu.Lock()
	r.dels[id] = append([]delReq(nil), reqs...)
	r.mu.Unlock()
	g.m.deletes.WithLabelValues("requested").Add(float64(len(ids)))
	return reqs[:0]
}

func (r *registrar) takeDels(eventID string) []delReq {
	r.mu.Lock()
	defer r.mu.Unlock()
	ws := r.dels[eventID]
	delete(r.dels, eventID)
	return ws
}

func (r *registrar) finishDeletes(ws []delReq, failed map[string]string, err error) {
	for _, w := range ws {
		if w.done == nil {
			continue
		}
		switch {
		case err != nil:
			w.done <- err
		case failed[w.deviceID] != "":
			w.done <- fmt.Errorf("%w: %s", errPlatformRefused, failed[w.deviceID])
		default:
			w.done <- nil
		}
	}
}

var errPlatformRefused = errors.New("the platform refused")

// expire fails registrations the platform never answered.
func (r *registrar) expire() {
	g := r.g
	now := g.now()
	var expired []*pendingReg
	r.mu.Lock()
	for n, p := range r.pending {
		if p.eventID != "" && now.Sub(p.sent) > addTimeout {
			expired = append(expired, p)
			delete(r.pending, n)
		}
	}
	r.mu.Unlock()
	for _, p := range expired {
		g.m.adds.WithLabelValues("timeout").Inc()
		g.log.Warn("add request not answered in time", "component", "gateway", "node_id", p.node)
		if c, ok := g.connOfPending(p); ok {
			c.Close(frame.CodeRefused, "the platform did not answer the registration in time; reconnect to retry")
		}
	}
}

// apply handles one $sub_device_manager event on the registrar goroutine.
func (r *registrar) apply(ctx context.Context, ev iotda.Event) {
	g := r.g
	switch ev.EventType {
	case iotda.EventAddNotify:
		var p iotda.NotifyParas
		if err := json.Unmarshal(ev.Paras, &p); err != nil {
			g.log.Warn("bad add notification", "component", "gateway", "err", err)
			return
		}
		devs := make([]subdevice.Device, 0, len(p.Devices))
		for _, info := range p.Devices {
			if d, ok := deviceFromInfo(info); ok && (info.ParentDeviceID == "" || info.ParentDeviceID == g.gw) {
				devs = append(devs, d)
			}
		}
		if !g.devs.ApplyAdd(p.Version, devs) {
			g.m.notifications.WithLabelValues("add", "stale").Inc()
			return
		}
		g.m.notifications.WithLabelValues("add", "applied").Inc()
		if err := g.st.ApplyNotify(ctx, p.Version, r.current(devs), nil); err != nil {
			g.log.Warn("saving an add notification failed", "component", "gateway", "err", err)
		}
		r.confirmed(devs)
	case iotda.EventDeleteNotify:
		var p iotda.NotifyParas
		if err := json.Unmarshal(ev.Paras, &p); err != nil {
			g.log.Warn("bad delete notification", "component", "gateway", "err", err)
			return
		}
		ids := make([]string, 0, len(p.Devices))
		for _, info := range p.Devices {
			if info.DeviceID != "" {
				ids = append(ids, info.DeviceID)
			}
		}
		removed, ok := g.devs.ApplyDelete(p.Version, ids)
		if !ok {
			g.m.notifications.WithLabelValues("delete", "stale").Inc()
			return
		}
		g.m.notifications.WithLabelValues("delete", "applied").Inc()
		if err := g.st.ApplyNotify(ctx, p.Version, nil, ids); err != nil {
			g.log.Warn("saving a delete notification failed", "component", "gateway", "err", err)
		}
		r.removed(removed)
	case iotda.EventAddResponse:
		var p iotda.AddResponseParas
		if err := json.Unmarshal(ev.Paras, &p); err != nil {
			g.log.Warn("bad add response", "component", "gateway", "err", err)
			return
		}
		var devs []subdevice.Device
		for _, info := range p.SuccessfulDevices {
			if d, ok := deviceFromInfo(info); ok {
				if old, had := g.devs.ByID(d.DeviceID); had {
					d.Remote, d.ConnectedAt, d.LastSeen = old.Remote, old.ConnectedAt, old.LastSeen
				}
				g.devs.Put(d)
				devs = append(devs, d)
			}
		}
		if len(devs) > 0 {
			if err := g.st.PutDevices(ctx, devs); err != nil {
				g.log.Warn("saving added sub-devices failed", "component", "gateway", "err", err)
			}
			g.m.adds.WithLabelValues("ok").Add(float64(len(devs)))
		}
		r.confirmed(devs)
		for _, f := range p.FailedDevices {
			g.m.adds.WithLabelValues("refused").Inc()
			g.log.Warn("platform refused to add a sub-device", "component", "gateway", "node_id", f.NodeID,
				"error_code", f.ErrorCode, "error_msg", f.ErrorMsg)
			r.mu.Lock()
			p, was := r.pending[f.NodeID]
			delete(r.pending, f.NodeID)
			r.mu.Unlock()
			if !was {
				continue
			}
			if c, ok := g.connOfPending(p); ok {
				c.Close(frame.CodeRefused, fmt.Sprintf("the platform refused the registration: %s %s", f.ErrorCode, f.ErrorMsg))
			}
		}
		// Ask for the notifications that carry the new list version
		// (iotda §3.7: whether an add also notifies is unconfirmed).
		g.sendSync()
	case iotda.EventDeleteResponse:
		var p iotda.DeleteResponseParas
		if err := json.Unmarshal(ev.Paras, &p); err != nil {
			g.log.Warn("bad delete response", "component", "gateway", "err", err)
			return
		}
		var removed []subdevice.Device
		for _, id := range p.SuccessfulDevices {
			if d, ok := g.devs.Delete(id); ok {
				removed = append(removed, d)
			}
		}
		if len(p.SuccessfulDevices) > 0 {
			if err := g.st.DeleteDevices(ctx, p.SuccessfulDevices); err != nil {
				g.log.Warn("deleting sub-device records failed", "component", "gateway", "err", err)
			}
			g.m.deletes.WithLabelValues("ok").Add(float64(len(p.SuccessfulDevices)))
		}
		failed := map[string]string{}
		for _, f := range p.FailedDevices {
			failed[f.DeviceID] = f.ErrorCode + " " + f.ErrorMsg
			g.m.deletes.WithLabelValues("refused").Inc()
			g.log.Warn("platform refused to delete a sub-device", "component", "gateway", "device_id", f.DeviceID,
				"error_code", f.ErrorCode, "error_msg", f.ErrorMsg)
		}
		r.removed(removed)
		r.finishDeletes(r.takeDels(ev.EventID), failed, nil)
		g.sendSync()
	case iotda.EventUpdateStatusResponse:
		var p iotda.UpdateStatusResponseParas
		if err := json.Unmarshal(ev.Paras, &p); err != nil {
			g.log.Warn("bad status response", "component", "gateway", "err", err)
			return
		}
		g.status.response(ev.EventID, p)
	default:
		g.log.Info("sub-device event ignored", "component", "gateway", "event", ev.EventType)
	}
}

// current returns the registry's copies of devs (with local fields).
func (r *registrar) current(devs []subdevice.Device) []subdevice.Device {
	out := make([]subdevice.Device, 0, len(devs))
	for _, d := range devs {
		if c, ok := r.g.devs.ByID(d.DeviceID); ok {
			out = append(out, c)
		}
	}
	return out
}

// confirmed finishes pending registrations of devs: a connected device is
// rebound to the platform's device id and reported ONLINE.
func (r *registrar) confirmed(devs []subdevice.Device) {
	g := r.g
	for _, d := range devs {
		// Under mu, like attach: a login that attached to the pending
		// registration is found here, a later one finds the record.
		r.mu.Lock()
		p, was := r.pending[d.NodeID]
		delete(r.pending, d.NodeID)
		c, ok := g.connByDevice(d.DeviceID)
		if !ok && was {
			c, ok = g.connOfPending(p)
		}
		r.mu.Unlock()
		if !ok {
			// Added on the platform side and not connected: the platform
			// shows it INACTIVE until it comes online.
			continue
		}
		g.rebind(c, d.DeviceID)
		var hello frame.Frame
		if was {
			hello.FwVersion, hello.SwVersion = p.fw, p.sw
		}
		g.markOnline(c, d.DeviceID, hello)
	}
}

// removed tells connected devices that they were deleted and closes them.
func (r *registrar) removed(devs []subdevice.Device) {
	g := r.g
	for _, d := range devs {
		g.props.drop(d.DeviceID)
		g.status.forget(d.DeviceID)
		if c, ok := g.connByDevice(d.DeviceID); ok {
			c.Close(frame.CodeDeleted, "this sub-device was deleted on the platform")
		}
	}
}

func deviceFromInfo(info iotda.DeviceInfo) (subdevice.Device, bool) {
	if info.DeviceID == "" || info.NodeID == "" {
		return subdevice.Device{}, false
	}
	st := subdevice.Status(info.Status)
	if !st.Valid() {
		st = subdevice.Inactive
	}
	return subdevice.Device{
		NodeID: info.NodeID, DeviceID: info.DeviceID, ProductID: info.ProductID, Name: info.Name,
		Description: info.Description, Status: st, FwVersion: info.FwVersion, SwVersion: info.SwVersion,
	}, true
}
