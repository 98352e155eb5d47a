package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"time"

	"github.com/subgate/subgate/northbound"
	"github.com/subgate/subgate/northbound/iotda"
	"github.com/subgate/subgate/store"
)

// ctrlMsg is a publish outside the outbox: a response to the platform or a
// management event. These are not durable: responses are worthless after
// the platform's timeout, and management state (statuses, sync) is
// re-derived from the registry after every reconnect.
type ctrlMsg struct {
	kind    string
	topic   string
	payload []byte
	done    func(error) // may be nil; called once, off the hot path
}

type awaitMsg struct {
	p    *northbound.Pending
	done func(error)
}

// enqueueControl queues a control publish without blocking. A full queue
// fails the message at once (counted).
func (g *Gateway) enqueueControl(class Class, kind, topic string, payload []byte, done func(error)) {
	q := g.ctrl[0]
	if class != ClassResponse {
		q = g.ctrl[1]
	}
	select {
	case q <- ctrlMsg{kind: kind, topic: topic, payload: payload, done: done}:
	default:
		g.m.controlDropped.WithLabelValues(class.String()).Inc()
		g.hit("control_queue_"+class.String(), "kind", kind)
		if done != nil {
			done(errControlFull)
		}
	}
}

var errControlFull = errors.New("gateway: control publish queue full")

// controlLoop publishes control messages of one class through the governor.
func (g *Gateway) controlLoop(ctx context.Context, class Class) error {
	q := g.ctrl[0]
	if class != ClassResponse {
		q = g.ctrl[1]
	}
	for {
		var m ctrlMsg
		select {
		case <-ctx.Done():
			return nil
		case m = <-q:
		}
		if err := g.gov.acquire(ctx, class, len(m.payload)); err != nil {
			if m.done != nil {
				m.done(err)
			}
			return nil
		}
		p, err := g.north.PublishAsync(m.kind, m.topic, m.payload)
		if err != nil {
			g.gov.release()
			g.log.Debug("control publish failed", "component", "gateway", "kind", m.kind, "err", err)
			if m.done != nil {
				m.done(err)
			}
			continue
		}
		select {
		case g.awaits <- awaitMsg{p: p, done: m.done}:
		case <-ctx.Done():
			return nil
		}
	}
}

// awaitLoop waits for PUBACKs of control publishes.
func (g *Gateway) awaitLoop(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case a := <-g.awaits:
			err := a.p.Wait(ctx)
			if a.done != nil {
				a.done(err)
			}
		}
	}
}

// inflight is an outbox publish awaiting its PUBACK.
type inflight struct {
	p     *northbound.Pending
	seqs  []uint64
	epoch uint64
	items int
}

// publishLoop moves the outbox to the platform: it packs items into as few
// publishes as the platform allows (iotda-protocol §2.3: ≤100 sub-devices
// per batch report), spends quota through the governor, and acknowledges
// items to the store only after their PUBACK on the same connection.
// After every reconnect it replays everything not acknowledged.
func (g *Gateway) publishLoop(ctx context.Context) error {
	acks := make(chan inflight, g.cfg.Northbound.Inflight)
	failed := make(chan uint64, 1)
	done := make(chan struct{})
	go func() {
		// The acker: waits for PUBACKs in publish order. It exits when
		// acks is closed below.
		defer close(done)
		for f := range acks {
			err := f.p.Wait(ctx)
			if err != nil {
				select {
				case failed <- f.epoch:
				default:
				}
				continue
			}
			if aerr := g.st.Ack(f.seqs...); aerr != nil {
				g.log.Warn("outbox ack failed; items will be sent again", "component", "gateway", "err", aerr, "n", len(f.seqs))
			}
			g.m.upPublished.Add(float64(f.items))
		}
	}()
	defer func() {
		close(acks)
		<-done
	}()

	// cursor: every item at or below it was published on this connection
	// (or acked). sent holds the seqs above the cursor that were published
	// too: a window's partial last batch is kept back for the next window
	// (it fills up there), so published and kept-back items interleave.
	var cursor uint64
	sent := map[uint64]struct{}{}
	skipSent := func(seq uint64) bool {
		_, ok := sent[seq]
		return ok
	}
	var epoch uint64
	var replayMark uint64
	for {
		if ctx.Err() != nil {
			return nil
		}
		if !g.north.Connected() {
			select {
			case <-ctx.Done():
				return nil
			case <-g.st.Notify():
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		if g.replayGate.Load() != g.epoch.Load() {
			// The after-connect messages of this connection are not queued
			// yet: they go first.
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		if e := g.epoch.Load(); e != epoch {
			// New connection: replay from the start of the outbox.
			epoch, cursor = e, 0
			clear(sent)
			replayMark = g.lastSeq.Load()
		}
		select {
		case fe := <-failed:
			if fe == epoch {
				// A publish of this connection failed: the connection is
				// going down; wait for the next one.
				cursor = 0
				clear(sent)
				continue
			}
		default:
		}
		items, err := g.st.PeekSkipping(cursor, peekItems, peekBytes, skipSent)
		if err != nil {
			g.log.Error("outbox read failed", "component", "gateway", "err", err)
			if !sleepCtx(ctx, time.Second) {
				return nil
			}
			continue
		}
		if len(items) == 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-g.st.Notify():
			case <-time.After(250 * time.Millisecond):
			}
			continue
		}
		if wait := g.linger(items); wait > 0 {
			// Too few reports for a full batch and none old enough: wait a
			// little for more, so the quota carries full batches and stays
			// free for responses (northbound.batch_linger).
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
			continue
		}
		units := make([]unit, len(items))
		for i, it := range items {
			units[i] = unit{it: it, seqs: []uint64{it.Seq}}
		}
		if g.cfg.Northbound.Coalesce && len(items) >= 2*iotda.MaxBatchDevices {
			// A backlog: keep only the latest value per device and service.
			before := len(units)
			units = coalesce(units)
			g.m.coalesced.Add(float64(before - len(units)))
		}
		// More items wait beyond this window: a partial last batch is
		// better filled from the next window than sent now.
		more := len(items) == peekItems || g.lastSeq.Load() > items[len(items)-1].Seq
		pubs, kept := g.pack(units, func(tail []unit) bool { return more || g.young(tail) })
		complete := true
		for _, p := range pubs {
			class := ClassTelemetry
			if p.maxSeq <= replayMark {
				class = ClassBacklog
			}
			if err := g.gov.acquire(ctx, class, len(p.payload)); err != nil {
				return nil
			}
			if g.epoch.Load() != epoch {
				g.gov.release()
				complete = false
				break
			}
			pend, err := g.north.PublishAsync(p.kind, p.topic, p.payload)
			if err != nil {
				g.gov.release()
				if errors.Is(err, northbound.ErrTooLarge) {
					// Cannot ever be sent: drop it loudly rather than block
					// the outbox forever.
					g.log.Error("outbox item above the publish limit, dropped", "component", "gateway", "n", len(p.seqs))
					_ = g.st.Ack(p.seqs...)
				} else {
					complete = false
					break
				}
			} else {
				g.m.packing.Observe(float64(p.devices))
				select {
				case acks <- inflight{p: pend, seqs: p.seqs, epoch: epoch, items: len(p.seqs)}:
				case <-ctx.Done():
					return nil
				}
			}
			for _, s := range p.seqs {
				sent[s] = struct{}{}
			}
		}
		if !complete {
			// The connection is going away: the next one replays from the
			// start of the outbox.
			continue
		}
		next := items[len(items)-1].Seq
		for _, u := range kept {
			next = min(next, slices.Min(u.seqs)-1)
		}
		cursor = max(cursor, next)
		for s := range sent {
			if s <= cursor {
				delete(sent, s)
			}
		}
	}
}

// Outbox window read per round of the publisher: 20 full batch reports.
// Reading and packing a window is a pause between two permits; a small
// window keeps that pause within the governor's catch-up burst, so no
// permit is lost to it.
const (
	peekItems = 20 * iotda.MaxBatchDevices
	peekBytes = 4 << 20
)

// young reports whether the oldest report of tail has waited less than
// northbound.batch_linger: a partial batch of young reports is kept back so
// that more reports can join it.
func (g *Gateway) young(tail []unit) bool {
	l := g.cfg.Northbound.BatchLinger
	if l <= 0 {
		return false
	}
	now := g.now()
	for _, u := range tail {
		if now.Sub(u.it.Enqueued) >= l {
			return false
		}
	}
	return true
}

// linger returns how long to wait before publishing a window that would
// not fill a batch report, or 0 to publish now.
func (g *Gateway) linger(items []store.Item) time.Duration {
	l := g.cfg.Northbound.BatchLinger
	if l <= 0 || len(items) >= iotda.MaxBatchDevices {
		return 0
	}
	oldest := items[0].Enqueued
	for _, it := range items {
		if it.Kind != store.KindProperties {
			return 0 // messages and events are not held back
		}
	}
	if age := g.now().Sub(oldest); age < l {
		return l - age
	}
	return 0
}

// packed is one publish built from outbox items.
type packed struct {
	kind    string
	topic   string
	payload []byte
	seqs    []uint64
	maxSeq  uint64
	devices int
}

// pack turns a window of outbox items into publishes. Property reports of
// many sub-devices share one batch report (≤100 devices, ≤ the publish
// limit), each device at most once per batch. A message or event of a device
// already in the open batch closes the batch first, so per-device order
// holds across kinds.
//
// At the end of the window the open (not full) batch and the reports
// deferred behind it form the tail. When keep is not nil, at least one
// publish was made and keep(tail) says so, the tail is returned unpublished
// instead: the caller reads it again with the next window, where it fills
// a batch. Every device's published reports come before its kept ones.
func (g *Gateway) pack(items []unit, keep func(tail []unit) bool) (out []packed, kept []unit) {
	maxBytes := g.cfg.Northbound.MaxPublishBytes - 1024
	type entry struct {
		id       string
		services []json.RawMessage
	}
	var batch []entry
	var open []unit // the units in batch
	index := map[string]int{}
	var bseqs []uint64
	var bmax uint64
	bsize := 16
	flush := func() {
		if len(batch) == 0 {
			return
		}
		bp := iotda.BatchProperties{Devices: make([]iotda.DeviceServices, 0, len(batch))}
		for _, e := range batch {
			ds := iotda.DeviceServices{DeviceID: e.id}
			for _, raw := range e.services {
				var svcs []iotda.Service
				if err := json.Unmarshal(raw, &svcs); err == nil {
					ds.Services = append(ds.Services, svcs...)
				}
			}
			bp.Devices = append(bp.Devices, ds)
		}
		payload, err := json.Marshal(bp)
		if err == nil {
			out = append(out, packed{kind: "batch_properties", topic: iotda.TopicBatchProperties(g.gw),
				payload: payload, seqs: bseqs, maxSeq: bmax, devices: len(batch)})
		}
		batch, open, bseqs, bmax, bsize = nil, nil, nil, 0, 16
		index = map[string]int{}
	}
	var deferred []unit
	deferredDev := map[string]bool{}
	var addProp func(u unit)
	addProp = func(u unit) {
		it := u.it
		add := len(it.Payload) + len(it.DeviceID) + 40
		if len(batch) >= iotda.MaxBatchDevices || bsize+add > maxBytes {
			flush()
		}
		index[it.DeviceID] = len(batch)
		batch = append(batch, entry{id: it.DeviceID, services: []json.RawMessage{it.Payload}})
		open = append(open, u)
		bseqs = append(bseqs, u.seqs...)
		bmax = max(bmax, slices.Max(u.seqs))
		bsize += add
	}
	// finish places the deferred reports into the open batch and further
	// batches, one report per device per pass, and publishes them. With
	// keep (nil: publish everything), it stops at the first batch that
	// cannot fill from this window and returns that batch and the reports
	// still deferred as the tail if keep(tail) says so.
	finish := func(keep func(tail []unit) bool) []unit {
		defer clear(deferredDev)
		for {
			if len(batch) >= iotda.MaxBatchDevices {
				flush() // full: nothing to wait for
			}
			if len(deferred) > 0 {
				rest := deferred[:0:0]
				restDev := map[string]bool{}
				for _, u := range deferred {
					// A device with a report left for a later pass keeps
					// all its later reports there too (per-device order).
					if _, again := index[u.it.DeviceID]; again || restDev[u.it.DeviceID] {
						rest = append(rest, u)
						restDev[u.it.DeviceID] = true
						continue
					}
					addProp(u)
				}
				progressed := len(rest) < len(deferred)
				deferred = rest
				if progressed {
					continue
				}
			}
			// The open batch cannot grow from this window any more.
			if len(batch) == 0 {
				return nil
			}
			if keep != nil && len(out) > 0 {
				if tail := append(slices.Clone(open), deferred...); keep(tail) {
					return tail
				}
				keep = nil
			}
			flush()
		}
	}
	for _, u := range items {
		it := u.it
		switch it.Kind {
		case store.KindProperties:
			// A device appears once per batch (decisions D13). A second
			// report of a device already in the open batch waits for a
			// later batch, behind any other report of that device, so the
			// batch keeps filling with other devices and each device's
			// reports stay in order.
			if _, again := index[it.DeviceID]; again || deferredDev[it.DeviceID] {
				deferred = append(deferred, u)
				deferredDev[it.DeviceID] = true
				continue
			}
			addProp(u)
		default:
			if _, ok := index[it.DeviceID]; ok || deferredDev[it.DeviceID] {
				finish(nil)
			}
			p := packed{seqs: u.seqs, maxSeq: slices.Max(u.seqs), devices: 1, payload: it.Payload}
			switch it.Kind {
			case store.KindMessage:
				p.kind, p.topic = "message", iotda.TopicMessagesUp(g.gw)
			case store.KindEvent:
				p.kind, p.topic = "event", iotda.TopicEventsUp(g.gw)
			case store.KindCustom:
				p.kind, p.topic = "custom", it.Topic
			default:
				g.log.Error("unknown outbox item kind, dropped", "component", "gateway", "kind", it.Kind.String())
				_ = g.st.Ack(it.Seq)
				continue
			}
			out = append(out, p)
		}
	}
	kept = finish(keep)
	return out, kept
}

// unit is an outbox item on its way to a publish, with the sequence
// numbers it stands for (several when coalesced).
type unit struct {
	it   store.Item
	seqs []uint64
}

// coalesce merges the property reports of each device in a backlog window
// into one report per device that keeps, per service, the latest value of
// every property and the latest event_time (northbound.coalesce). Reports
// that do not parse are kept as they are. Other kinds pass through.
func coalesce(units []unit) []unit {
	type svcState struct {
		keys  []string
		props map[string]json.RawMessage
		time  string
	}
	type devState struct {
		at    int // index in out
		order []string
		svcs  map[string]*svcState
	}
	devs := map[string]*devState{}
	out := make([]unit, 0, len(units))
	for _, u := range units {
		if u.it.Kind != store.KindProperties {
			out = append(out, u)
			continue
		}
		var svcs []iotda.Service
		if err := json.Unmarshal(u.it.Payload, &svcs); err != nil {
			out = append(out, u)
			continue
		}
		d, ok := devs[u.it.DeviceID]
		if !ok {
			d = &devState{at: len(out), svcs: map[string]*svcState{}}
			devs[u.it.DeviceID] = d
			out = append(out, unit{it: u.it})
		}
		out[d.at].seqs = append(out[d.at].seqs, u.seqs...)
		for _, sv := range svcs {
			st, ok := d.svcs[sv.ServiceID]
			if !ok {
				st = &svcState{props: map[string]json.RawMessage{}}
				d.svcs[sv.ServiceID] = st
				d.order = append(d.order, sv.ServiceID)
			}
			var props map[string]json.RawMessage
			if json.Unmarshal(sv.Properties, &props) != nil {
				continue
			}
			for k, v := range props {
				if _, seen := st.props[k]; !seen {
					st.keys = append(st.keys, k)
				}
				st.props[k] = v
			}
			if sv.EventTime != "" {
				st.time = sv.EventTime
			}
		}
	}
	for _, d := range devs {
		svcs := make([]iotda.Service, 0, len(d.order))
		for _, id := range d.order {
			st := d.svcs[id]
			slices.Sort(st.keys)
			obj := make(map[string]json.RawMessage, len(st.props))
			for _, k := range st.keys {
				obj[k] = st.props[k]
			}
			b, _ := json.Marshal(obj)
			svcs = append(svcs, iotda.Service{ServiceID: id, Properties: b, EventTime: st.time})
		}
		payload, _ := json.Marshal(svcs)
		out[d.at].it.Payload = payload
	}
	return out
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
