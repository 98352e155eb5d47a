package iotdasim

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/subgate/subgate/northbound/iotda"
)

// Message is a recorded upstream message (iotda-protocol §2.1).
type Message struct {
	Gateway string `json:"gateway"`
	// DeviceID is object_device_id of a system-format message, else the
	// gateway id.
	DeviceID string `json:"device_id"`
	Name     string `json:"name,omitempty"`
	ID       string `json:"id,omitempty"`
	// System reports whether the payload was the system format.
	System bool `json:"system"`
	// Content is the content as bytes (unquoted if it was a JSON string),
	// or the whole payload when System is false.
	Content []byte `json:"content"`
	// Topic is the topic; custom and policy topics are recorded here too.
	Topic string `json:"topic"`
	// RequestID is the ?request_id= of the topic, if any.
	RequestID string    `json:"request_id,omitempty"`
	At        time.Time `json:"at"`
}

// PropertyReport is a recorded property report for one device, from a
// batch report (iotda-protocol §2.3) or the gateway's own (§2.2).
type PropertyReport struct {
	Gateway  string          `json:"gateway"`
	DeviceID string          `json:"device_id"`
	Services []iotda.Service `json:"services"`
	Batch    bool            `json:"batch"`
	At       time.Time       `json:"at"`
}

// UpEvent is one recorded upstream system event (iotda-protocol §2.8).
type UpEvent struct {
	Gateway        string      `json:"gateway"`
	ObjectDeviceID string      `json:"object_device_id,omitempty"`
	Event          iotda.Event `json:"event"`
	At             time.Time   `json:"at"`
}

// StatusUpdate is one recorded sub_device_update_status message.
type StatusUpdate struct {
	Gateway  string               `json:"gateway"`
	EventID  string               `json:"event_id,omitempty"`
	Statuses []iotda.DeviceStatus `json:"device_statuses"`
	At       time.Time            `json:"at"`
}

// Entries is the number of statuses in the message; each counts one
// towards the platform's TPS (iotda-protocol §3.3).
func (u StatusUpdate) Entries() int { return len(u.Statuses) }

// Publish is one recorded upstream PUBLISH, for rate checks.
type Publish struct {
	Gateway string
	Topic   string
	Kind    iotda.Kind
	Size    int
	QoS     byte
	At      time.Time
}

// ConnEvent records a connect or disconnect of a gateway.
type ConnEvent struct {
	Gateway   string
	ClientID  string
	Remote    string
	Connected bool
	Err       string
	At        time.Time
}

// boundedLog keeps the newest max items and counts the dropped ones.
type boundedLog[T any] struct {
	items   []T
	max     int
	dropped int64
}

func (l *boundedLog[T]) add(v T) {
	if len(l.items) >= l.max {
		// Drop the oldest. Re-slicing keeps the append amortised; the
		// backing array is reallocated with live items only.
		l.items[0] = *new(T)
		l.items = l.items[1:]
		l.dropped++
	}
	l.items = append(l.items, v)
}

func (l *boundedLog[T]) snapshot() []T { return slices.Clone(l.items) }

// records is the recorded uplink. Guarded by Sim.mu.
type records struct {
	messages   boundedLog[Message]
	properties boundedLog[PropertyReport]
	events     boundedLog[UpEvent]
	statuses   boundedLog[StatusUpdate]
	publishes  boundedLog[Publish]
	conns      boundedLog[ConnEvent]
	errors     boundedLog[string]
	// Counters per device id, never dropped; keys are bounded by the
	// known devices because unknown ones are refused before counting.
	msgCount  map[string]int
	propCount map[string]int
}

func newRecords(max int) records {
	return records{
		messages:   boundedLog[Message]{max: max},
		properties: boundedLog[PropertyReport]{max: max},
		events:     boundedLog[UpEvent]{max: max},
		statuses:   boundedLog[StatusUpdate]{max: max},
		publishes:  boundedLog[Publish]{max: max},
		conns:      boundedLog[ConnEvent]{max: max},
		errors:     boundedLog[string]{max: max},
		msgCount:   map[string]int{},
		propCount:  map[string]int{},
	}
}

// View reads the simulator's state inside WaitFor and View. Its methods
// must be called only during the callback that received it, which holds
// the simulator's lock: they must not call Sim methods. Returned slices
// and values are copies.
type View struct{ s *Sim }

// Devices returns the sub-devices of gw with their status, sorted by
// device id.
func (v *View) Devices(gw string) []iotda.DeviceInfo {
	g := v.s.gateways[gw]
	if g == nil {
		return nil
	}
	out := make([]iotda.DeviceInfo, 0, len(g.devices))
	for _, d := range g.devices {
		out = append(out, d.info())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].DeviceID < out[j].DeviceID })
	return out
}

// Device returns one sub-device of gw.
func (v *View) Device(gw, id string) (iotda.DeviceInfo, bool) {
	g := v.s.gateways[gw]
	if g == nil {
		return iotda.DeviceInfo{}, false
	}
	d, ok := g.devices[id]
	if !ok {
		return iotda.DeviceInfo{}, false
	}
	return d.info(), true
}

// Status returns the platform status of sub-device id under gw, or "" if
// unknown.
func (v *View) Status(gw, id string) string {
	d, _ := v.Device(gw, id)
	return d.Status
}

// Version returns the sub-device list version of gw.
func (v *View) Version(gw string) int64 {
	if g := v.s.gateways[gw]; g != nil {
		return g.version
	}
	return 0
}

// Connected reports whether gw has a live MQTT connection.
func (v *View) Connected(gw string) bool {
	g := v.s.gateways[gw]
	return g != nil && g.conn != nil
}

// Connects returns how many times gw has connected successfully.
func (v *View) Connects(gw string) int {
	if g := v.s.gateways[gw]; g != nil {
		return g.connects
	}
	return 0
}

// Subscriptions returns the explicit subscriptions of gw's current
// connection with their granted QoS.
func (v *View) Subscriptions(gw string) map[string]byte {
	g := v.s.gateways[gw]
	if g == nil || g.conn == nil {
		return nil
	}
	out := make(map[string]byte, len(g.conn.subs))
	for f, q := range g.conn.subs {
		out[f] = q
	}
	return out
}

// Messages returns the recorded upstream messages, oldest first.
func (v *View) Messages() []Message { return v.s.rec.messages.snapshot() }

// MessageCount returns how many messages were recorded for device id
// (including dropped ones).
func (v *View) MessageCount(id string) int { return v.s.rec.msgCount[id] }

// Properties returns the retained property reports of device id in
// arrival order.
func (v *View) Properties(id string) []PropertyReport {
	var out []PropertyReport
	for _, p := range v.s.rec.properties.items {
		if p.DeviceID == id {
			out = append(out, p)
		}
	}
	return out
}

// PropertyCount returns how many property reports were recorded for
// device id (including dropped ones).
func (v *View) PropertyCount(id string) int { return v.s.rec.propCount[id] }

// Events returns the recorded upstream system events, oldest first.
func (v *View) Events() []UpEvent { return v.s.rec.events.snapshot() }

// EventsOf returns the recorded upstream events of one event type.
func (v *View) EventsOf(eventType string) []UpEvent {
	var out []UpEvent
	for _, e := range v.s.rec.events.items {
		if e.Event.EventType == eventType {
			out = append(out, e)
		}
	}
	return out
}

// StatusUpdates returns the recorded status updates, oldest first.
func (v *View) StatusUpdates() []StatusUpdate { return v.s.rec.statuses.snapshot() }

// Publishes returns the recorded upstream PUBLISHes of gw ("" = all).
func (v *View) Publishes(gw string) []Publish {
	if gw == "" {
		return v.s.rec.publishes.snapshot()
	}
	var out []Publish
	for _, p := range v.s.rec.publishes.items {
		if p.Gateway == gw {
			out = append(out, p)
		}
	}
	return out
}

// ConnEvents returns the recorded connects and disconnects.
func (v *View) ConnEvents() []ConnEvent { return v.s.rec.conns.snapshot() }

// Errors returns the recorded protocol errors, oldest first.
func (v *View) Errors() []string { return v.s.rec.errors.snapshot() }

// Violations returns the number of upstream publishes over the rate cap.
func (v *View) Violations() int64 { return v.s.violations }

// Dropped returns the number of dropped records per kind.
func (v *View) Dropped() map[string]int64 {
	r := &v.s.rec
	return map[string]int64{
		"messages": r.messages.dropped, "properties": r.properties.dropped, "events": r.events.dropped,
		"status_updates": r.statuses.dropped, "publishes": r.publishes.dropped, "conns": r.conns.dropped,
		"errors": r.errors.dropped, "changes": v.s.changesDropped,
	}
}

// View calls fn with a consistent view of the state. fn runs under the
// simulator's lock and must not call Sim methods.
func (s *Sim) View(fn func(*View)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fn(&View{s})
}

// WaitFor blocks until cond returns true, re-evaluating it after every
// recorded change, or until ctx is done or the simulator is closed. Stop
// does not end the wait (the state is kept and Start may follow). cond
// runs under the simulator's lock and must not call Sim methods.
func (s *Sim) WaitFor(ctx context.Context, cond func(*View) bool) error {
	for {
		s.mu.Lock()
		ok := cond(&View{s})
		ch := s.changed
		s.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-s.done:
			return ErrClosed
		}
	}
}

// notifyLocked wakes WaitFor callers. Call with s.mu held after a change.
func (s *Sim) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// errorfLocked records a protocol error of gateway gw. Call with s.mu
// held.
func (s *Sim) errorfLocked(gw, format string, args ...any) {
	line := gw + ": " + fmt.Sprintf(format, args...)
	s.rec.errors.add(line)
	s.log.Warn("protocol error", "device_id", gw, "err", line)
	s.notifyLocked()
}

// Devices returns the sub-devices of gw with their status.
func (s *Sim) Devices(gw string) []iotda.DeviceInfo {
	var out []iotda.DeviceInfo
	s.View(func(v *View) { out = v.Devices(gw) })
	return out
}

// Status returns the platform status of sub-device id under gw.
func (s *Sim) Status(gw, id string) string {
	var out string
	s.View(func(v *View) { out = v.Status(gw, id) })
	return out
}

// Version returns the sub-device list version of gw.
func (s *Sim) Version(gw string) int64 {
	var out int64
	s.View(func(v *View) { out = v.Version(gw) })
	return out
}

// Connected reports whether gw has a live MQTT connection.
func (s *Sim) Connected(gw string) bool {
	var out bool
	s.View(func(v *View) { out = v.Connected(gw) })
	return out
}

// Messages returns the recorded upstream messages.
func (s *Sim) Messages() []Message {
	var out []Message
	s.View(func(v *View) { out = v.Messages() })
	return out
}

// Properties returns the recorded property reports of device id.
func (s *Sim) Properties(id string) []PropertyReport {
	var out []PropertyReport
	s.View(func(v *View) { out = v.Properties(id) })
	return out
}

// Events returns the recorded upstream system events.
func (s *Sim) Events() []UpEvent {
	var out []UpEvent
	s.View(func(v *View) { out = v.Events() })
	return out
}

// StatusUpdates returns the recorded status updates.
func (s *Sim) StatusUpdates() []StatusUpdate {
	var out []StatusUpdate
	s.View(func(v *View) { out = v.StatusUpdates() })
	return out
}

// Publishes returns the recorded upstream PUBLISHes of gw ("" = all).
func (s *Sim) Publishes(gw string) []Publish {
	var out []Publish
	s.View(func(v *View) { out = v.Publishes(gw) })
	return out
}

// Errors returns the recorded protocol errors.
func (s *Sim) Errors() []string {
	var out []string
	s.View(func(v *View) { out = v.Errors() })
	return out
}

// Violations returns the number of upstream publishes over the rate cap.
func (s *Sim) Violations() int64 {
	var out int64
	s.View(func(v *View) { out = v.Violations() })
	return out
}

// Dropped returns the number of dropped records per kind.
func (s *Sim) Dropped() map[string]int64 {
	var out map[string]int64
	s.View(func(v *View) { out = v.Dropped() })
	return out
}
