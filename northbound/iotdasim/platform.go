package iotdasim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/subgate/subgate/northbound/iotda"
	"github.com/subgate/subgate/subdevice"
)

// Error codes the simulator puts in failed_devices. The platform's value
// set is undocumented (iotda-protocol §3.9); these are the simulator's own
// and say so by their prefix.
const (
	CodeDeviceExists   = "SIM.DEVICE_EXISTS"
	CodeNodeExists     = "SIM.NODE_EXISTS"
	CodeDeviceNotFound = "SIM.DEVICE_NOT_FOUND"
	CodeParentNotFound = "SIM.PARENT_NOT_FOUND"
	CodeHasChildren    = "SIM.HAS_CHILDREN"
	CodeInvalid        = "SIM.INVALID"
	CodeTooMany        = "SIM.TOO_MANY"
	CodeAddRefused     = "SIM.ADD_REFUSED"
)

// out is a downstream message built under the lock and published after.
type out struct {
	topic   string
	payload []byte
}

// platformLoop is the platform goroutine of one run: it processes
// upstream publishes one at a time, in arrival order. stop is closed once
// no connection is left (see shutdown); the loop then processes what is
// still queued, whose answers have no connection to go to, and exits.
func (s *Sim) platformLoop(stop <-chan struct{}) {
	defer s.wg.Done()
	for {
		select {
		case u := <-s.inbox:
			for _, o := range s.handle(u) {
				if err := s.publish(o.topic, o.payload); err != nil {
					s.log.Warn("downstream publish failed", "device_id", u.gw, "topic", o.topic, "err", err)
				}
			}
		case <-stop:
			n := 0
			for {
				select {
				case u := <-s.inbox:
					s.handle(u)
					n++
				default:
					s.log.Debug("platform goroutine stopped", "n", n)
					return
				}
			}
		}
	}
}

// handle processes one upstream publish and returns what to send back.
func (s *Sim) handle(u uplink) []out {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.gateways[u.gw]
	id, kind, rid, err := iotda.ParseTopic(u.topic)
	if err != nil {
		if _, own := iotda.TopicDevice(u.topic); own && !strings.HasPrefix(u.topic, iotda.TopicPrefix+u.gw+"/user/") {
			s.errorfLocked(u.gw, "unknown system topic %q", u.topic)
			return nil
		}
		// A custom $oc/devices/{id}/user/ topic or a policy topic: any
		// payload, recorded as a raw message (iotda-protocol §2.1).
		s.recordMessageLocked(Message{Gateway: u.gw, DeviceID: u.gw, Content: u.payload, Topic: u.topic, At: u.at})
		return nil
	}
	if id != u.gw {
		// The ACL refuses this before it gets here; kept as a guard.
		s.errorfLocked(u.gw, "publish on topic of %q", id)
		return nil
	}
	if kind != iotda.KindMessageUp && !utf8.Valid(u.payload) {
		s.errorfLocked(u.gw, "%s payload is not UTF-8 (iotda-protocol §0)", kind)
		return nil
	}
	switch kind {
	case iotda.KindMessageUp:
		s.messageUpLocked(g, u, rid)
	case iotda.KindPropertiesReport:
		s.propertiesLocked(g, u)
	case iotda.KindBatchProperties:
		s.batchPropertiesLocked(g, u)
	case iotda.KindEventUp:
		return s.eventsLocked(g, u)
	case iotda.KindCommandResponse, iotda.KindPropertySetResponse, iotda.KindPropertyGetResponse:
		s.responseLocked(g, u, kind, rid)
	case iotda.KindShadowGet:
		return s.shadowGetLocked(g, u, rid)
	case iotda.KindBootstrapUp:
		if s.cfg.BootstrapAddress == "" {
			s.errorfLocked(u.gw, "bootstrap request sent to the IoTDA endpoint, not the bootstrap server (iotda-protocol §5.6)")
			return nil
		}
		// Playing the provisioning service: answer with the access address
		// (iotda-protocol §5.6).
		b, _ := json.Marshal(map[string]string{"address": s.cfg.BootstrapAddress})
		s.recordMessageLocked(Message{Gateway: u.gw, DeviceID: u.gw, Content: u.payload, Topic: u.topic, At: u.at})
		return []out{{topic: iotda.TopicBootstrapDown(u.gw), payload: b}}
	default:
		s.errorfLocked(u.gw, "device published on downstream topic %q", u.topic)
	}
	return nil
}

// decodeStrict decodes one JSON value, refusing unknown fields and
// trailing data, so misspelt keys are caught.
func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("trailing data after JSON value")
	}
	return nil
}

// known reports whether id is gw itself or one of its sub-devices.
func (g *gateway) known(id string) bool {
	if id == g.id {
		return true
	}
	_, ok := g.devices[id]
	return ok
}

func (s *Sim) recordMessageLocked(m Message) {
	s.rec.messages.add(m)
	s.rec.msgCount[m.DeviceID]++
	s.notifyLocked()
}

func (s *Sim) messageUpLocked(g *gateway, u uplink, rid string) {
	m := Message{Gateway: g.id, DeviceID: g.id, Topic: u.topic, RequestID: rid, At: u.at}
	if sm, system := iotda.ParseMessageDown(u.payload); system {
		if sm.ObjectDeviceID != "" {
			if !g.known(sm.ObjectDeviceID) {
				s.errorfLocked(g.id, "message for unknown object_device_id %q", sm.ObjectDeviceID)
				return
			}
			m.DeviceID = sm.ObjectDeviceID
		}
		m.System, m.Name, m.ID, m.Content = true, sm.Name, sm.ID, sm.ContentBytes()
	} else {
		m.Content = u.payload
	}
	s.recordMessageLocked(m)
}

func (s *Sim) propertiesLocked(g *gateway, u uplink) {
	var r iotda.PropertiesReport
	if err := decodeStrict(u.payload, &r); err != nil {
		s.errorfLocked(g.id, "properties report: %v", err)
		return
	}
	check := iotda.BatchProperties{Devices: []iotda.DeviceServices{{DeviceID: g.id, Services: r.Services}}}
	if err := check.Validate(); err != nil {
		s.errorfLocked(g.id, "properties report: %v", err)
		return
	}
	s.rec.properties.add(PropertyReport{Gateway: g.id, DeviceID: g.id, Services: r.Services, At: u.at})
	s.rec.propCount[g.id]++
	s.notifyLocked()
}

func (s *Sim) batchPropertiesLocked(g *gateway, u uplink) {
	var b iotda.BatchProperties
	if err := decodeStrict(u.payload, &b); err != nil {
		s.errorfLocked(g.id, "batch properties: %v", err)
		return
	}
	if err := b.Validate(); err != nil {
		s.errorfLocked(g.id, "batch properties: %v", err)
		return
	}
	for _, d := range b.Devices {
		if _, ok := g.devices[d.DeviceID]; !ok {
			s.errorfLocked(g.id, "batch properties for unknown sub-device %q", d.DeviceID)
			continue
		}
		s.rec.properties.add(PropertyReport{Gateway: g.id, DeviceID: d.DeviceID, Services: d.Services, Batch: true, At: u.at})
		s.rec.propCount[d.DeviceID]++
	}
	s.notifyLocked()
}

// eventsLocked validates and dispatches an events/up payload
// (iotda-protocol §2.8).
func (s *Sim) eventsLocked(g *gateway, u uplink) []out {
	if err := decodeStrict(u.payload, new(iotda.Events)); err != nil {
		s.errorfLocked(g.id, "events: %v", err)
		return nil
	}
	evs, err := iotda.ParseEvents(u.payload)
	if err != nil {
		s.errorfLocked(g.id, "events: %v", err)
		return nil
	}
	var outs []out
	for _, ev := range evs.Services {
		if ev.EventTime != "" {
			if _, err := iotda.ParseEventTime(ev.EventTime); err != nil || len(ev.EventTime) != len("20060102T150405Z") {
				s.errorfLocked(g.id, "%s: event_time %q is not yyyyMMdd'T'HHmmss'Z' (iotda-protocol §0)", ev.EventType, ev.EventTime)
			}
		}
		if ev.ServiceID == iotda.ServiceSubDeviceManager {
			// object_device_id is "not used" here; SDKs fill in the
			// gateway id (iotda-protocol §2.8).
			if evs.ObjectDeviceID != "" && evs.ObjectDeviceID != g.id {
				s.errorfLocked(g.id, "%s with object_device_id %q, want none or the gateway", ev.EventType, evs.ObjectDeviceID)
				continue
			}
		} else if evs.ObjectDeviceID != "" && !g.known(evs.ObjectDeviceID) {
			s.errorfLocked(g.id, "%s for unknown object_device_id %q", ev.EventType, evs.ObjectDeviceID)
			continue
		}
		target := evs.ObjectDeviceID
		if target == "" {
			target = g.id
		}
		if !s.validEventLocked(g, ev) {
			continue
		}
		s.rec.events.add(UpEvent{Gateway: g.id, ObjectDeviceID: evs.ObjectDeviceID, Event: ev, At: u.at})
		s.notifyLocked()
		switch ev.EventType {
		case iotda.EventUpdateStatus:
			outs = append(outs, s.updateStatusLocked(g, ev, u)...)
		case iotda.EventAddRequest:
			outs = append(outs, s.addRequestLocked(g, ev)...)
		case iotda.EventDeleteRequest:
			outs = append(outs, s.deleteRequestLocked(g, ev)...)
		case iotda.EventSyncRequest:
			outs = append(outs, s.syncLocked(g, ev)...)
		case iotda.EventTimeSyncRequest:
			outs = append(outs, s.timeSyncLocked(g, ev, target, u)...)
		}
	}
	return outs
}

// eventTypes lists the upstream event types per service. Services out of
// scope for a gateway ($file_manager, $device_rule) are accepted and
// recorded without checks.
var eventTypes = map[string]map[string]bool{
	iotda.ServiceSubDeviceManager: {iotda.EventUpdateStatus: true, iotda.EventAddRequest: true,
		iotda.EventDeleteRequest: true, iotda.EventSyncRequest: true},
	iotda.ServiceOTA:         {iotda.EventVersionReport: true, iotda.EventUpgradeProgress: true},
	iotda.ServiceTimeSync:    {iotda.EventTimeSyncRequest: true},
	iotda.ServiceSDKInfo:     {iotda.EventSDKInfoReport: true},
	iotda.ServiceLog:         {iotda.EventLogReport: true},
	iotda.ServiceFileManager: nil,
	iotda.ServiceDeviceRule:  nil,
}

// validEventLocked checks service id, event type and paras of one
// upstream event and records what is wrong.
func (s *Sim) validEventLocked(g *gateway, ev iotda.Event) bool {
	types, ok := eventTypes[ev.ServiceID]
	if !ok {
		s.errorfLocked(g.id, "unknown service_id %q for %s (system services start with $)", ev.ServiceID, ev.EventType)
		return false
	}
	if types == nil {
		return true
	}
	if !types[ev.EventType] {
		s.errorfLocked(g.id, "event_type %q is not an upstream event of %s", ev.EventType, ev.ServiceID)
		return false
	}
	var err error
	switch ev.EventType {
	case iotda.EventUpdateStatus:
		err = ev.DecodeParasStrict(new(iotda.UpdateStatusParas))
	case iotda.EventAddRequest:
		err = ev.DecodeParasStrict(new(iotda.AddRequestParas))
	case iotda.EventDeleteRequest:
		err = ev.DecodeParasStrict(new(iotda.DeleteRequestParas))
	case iotda.EventSyncRequest:
		err = ev.DecodeParasStrict(new(iotda.SyncParas))
	case iotda.EventVersionReport:
		err = ev.DecodeParasStrict(new(iotda.VersionReportParas))
	case iotda.EventUpgradeProgress:
		var p iotda.ProgressParas
		if err = ev.DecodeParasStrict(&p); err == nil {
			err = validProgress(ev.Paras, p)
		}
	case iotda.EventTimeSyncRequest:
		var p iotda.TimeSyncRequestParas
		if err = ev.DecodeParasStrict(&p); err == nil && p.DeviceSendTime <= 0 {
			err = fmt.Errorf("device_send_time must be epoch milliseconds as a number")
		}
	case iotda.EventSDKInfoReport:
		err = ev.DecodeParasStrict(new(iotda.SDKInfoParas))
	case iotda.EventLogReport:
		var p iotda.LogReportParas
		if err = ev.DecodeParasStrict(&p); err == nil {
			err = p.Validate()
		}
	}
	if err != nil {
		s.errorfLocked(g.id, "%s: %v", ev.EventType, err)
		return false
	}
	return true
}

func validProgress(raw json.RawMessage, p iotda.ProgressParas) error {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return err
	}
	if _, ok := fields["result_code"]; !ok {
		return fmt.Errorf("result_code is required (iotda-protocol §4.5)")
	}
	if p.Version == "" {
		return fmt.Errorf("version is required (iotda-protocol §4.5)")
	}
	if p.Progress < 0 || p.Progress > 100 {
		return fmt.Errorf("progress %d outside 0-100", p.Progress)
	}
	switch {
	case p.ResultCode >= 0 && p.ResultCode <= 10, p.ResultCode == 255:
	default:
		return fmt.Errorf("result_code %d is not documented", p.ResultCode)
	}
	return nil
}

// downEvent builds one events/down message for gw.
func downEvent(gw, objectDeviceID, serviceID, eventType, eventID string, paras any) (out, error) {
	b, err := iotda.NewEvents(objectDeviceID, serviceID, eventType, eventID, time.Time{}, paras)
	if err != nil {
		return out{}, err
	}
	return out{topic: iotda.TopicEventsDown(gw), payload: b}, nil
}

func (s *Sim) mustDownEvent(g *gateway, objectDeviceID, serviceID, eventType, eventID string, paras any) []out {
	o, err := downEvent(g.id, objectDeviceID, serviceID, eventType, eventID, paras)
	if err != nil {
		s.log.Error("marshal downstream event", "device_id", g.id, "err", err)
		return nil
	}
	return []out{o}
}

func eventIDOrNew(ev iotda.Event) string {
	if ev.EventID != "" {
		return ev.EventID
	}
	return newID()
}

// updateStatusLocked applies sub_device_update_status and answers it
// (iotda-protocol §3.3).
func (s *Sim) updateStatusLocked(g *gateway, ev iotda.Event, u uplink) []out {
	var p iotda.UpdateStatusParas
	_ = ev.DecodeParas(&p) // validated
	s.rec.statuses.add(StatusUpdate{Gateway: g.id, EventID: ev.EventID, Statuses: p.DeviceStatuses, At: u.at})
	if n := len(p.DeviceStatuses); n == 0 || n > iotda.MaxStatusesPerMessage {
		s.errorfLocked(g.id, "%s with %d device_statuses, want 1-%d", ev.EventType, n, iotda.MaxStatusesPerMessage)
		return nil
	}
	var rsp iotda.UpdateStatusResponseParas
	for _, st := range p.DeviceStatuses {
		d, ok := g.devices[st.DeviceID]
		switch {
		case !ok:
			s.errorfLocked(g.id, "status for unknown sub-device %q", st.DeviceID)
			rsp.FailedDevices = append(rsp.FailedDevices, iotda.FailedDevice{DeviceID: st.DeviceID, ErrorCode: CodeDeviceNotFound, ErrorMsg: "sub-device not found"})
		case st.Status != iotda.StatusOnline && st.Status != iotda.StatusOffline:
			s.errorfLocked(g.id, "status %q for %q is not ONLINE or OFFLINE", st.Status, st.DeviceID)
			rsp.FailedDevices = append(rsp.FailedDevices, iotda.FailedDevice{DeviceID: st.DeviceID, ErrorCode: CodeInvalid, ErrorMsg: "status must be ONLINE or OFFLINE"})
		default:
			d.Status = st.Status
			rsp.SuccessfulDevices = append(rsp.SuccessfulDevices, st)
		}
	}
	s.notifyLocked()
	return s.mustDownEvent(g, g.id, iotda.ServiceSubDeviceManager, iotda.EventUpdateStatusResponse, eventIDOrNew(ev), rsp)
}

// addRequestLocked applies add_sub_device_request, answers it and sends
// the add notification with the new version (iotda-protocol §3.7; that a
// successful add also notifies is Appendix B item 2, assumed here).
func (s *Sim) addRequestLocked(g *gateway, ev iotda.Event) []out {
	var p iotda.AddRequestParas
	_ = ev.DecodeParas(&p)
	var rsp iotda.AddResponseParas
	fail := func(d iotda.AddDevice, code, msg string) {
		rsp.FailedDevices = append(rsp.FailedDevices, iotda.FailedDevice{NodeID: d.NodeID, ProductID: d.ProductID, DeviceID: d.DeviceID, ErrorCode: code, ErrorMsg: msg})
	}
	if n := len(p.Devices); n == 0 || n > iotda.MaxAddPerRequest {
		s.errorfLocked(g.id, "%s with %d devices, want 1-%d", ev.EventType, n, iotda.MaxAddPerRequest)
		for _, d := range p.Devices {
			fail(d, CodeTooMany, "more than 50 devices in one request")
		}
	} else {
		var added []iotda.DeviceInfo
		for i, d := range p.Devices {
			if err := d.Validate(); err != nil {
				s.errorfLocked(g.id, "%s devices[%d]: %v", ev.EventType, i, err)
				fail(d, CodeInvalid, err.Error())
				continue
			}
			if r, ok := s.refused[d.NodeID]; ok {
				fail(d, r.ErrorCode, r.ErrorMsg)
				continue
			}
			if !s.cfg.AutoAcceptAdds {
				fail(d, CodeAddRefused, "automatic acceptance is off")
				continue
			}
			info, code, msg := s.newDeviceLocked(g, iotda.DeviceInfo{
				ParentDeviceID: d.ParentDeviceID, NodeID: d.NodeID, DeviceID: d.DeviceID, Name: d.Name,
				Description: d.Description, ProductID: d.ProductID, ExtensionInfo: d.ExtensionInfo,
			}, g.version+1)
			if code != "" {
				fail(d, code, msg)
				continue
			}
			added = append(added, info)
		}
		if len(added) > 0 {
			g.version++
			rsp.SuccessfulDevices = added
		}
	}
	s.notifyLocked()
	outs := s.mustDownEvent(g, g.id, iotda.ServiceSubDeviceManager, iotda.EventAddResponse, eventIDOrNew(ev), rsp)
	if len(rsp.SuccessfulDevices) > 0 {
		outs = append(outs, s.mustDownEvent(g, g.id, iotda.ServiceSubDeviceManager, iotda.EventAddNotify, "",
			iotda.NotifyParas{Version: g.version, Devices: rsp.SuccessfulDevices})...)
	}
	return outs
}

// newDeviceLocked creates a sub-device at list version v (the caller
// bumps g.version) and logs the change. It returns a failure code and
// message instead when the device cannot be created.
func (s *Sim) newDeviceLocked(g *gateway, d iotda.DeviceInfo, v int64) (iotda.DeviceInfo, string, string) {
	if d.DeviceID == "" {
		d.DeviceID = d.ProductID + "_" + d.NodeID
	}
	if err := subdevice.ValidateDeviceID(d.DeviceID); err != nil {
		return d, CodeInvalid, err.Error()
	}
	if d.ParentDeviceID == "" {
		d.ParentDeviceID = g.id
	}
	if d.ParentDeviceID != g.id {
		// Two levels at most (iotda-protocol §0): the parent must be a
		// direct sub-device of this gateway.
		p, ok := g.devices[d.ParentDeviceID]
		if !ok || p.ParentDeviceID != g.id {
			return d, CodeParentNotFound, "parent must be the gateway or one of its direct sub-devices"
		}
	}
	for _, og := range s.gateways {
		if _, ok := og.devices[d.DeviceID]; ok || og.id == d.DeviceID {
			return d, CodeDeviceExists, "device id already exists"
		}
	}
	for _, od := range g.devices {
		if od.NodeID == d.NodeID {
			return d, CodeNodeExists, "node id already exists under this gateway"
		}
	}
	d.Status = iotda.StatusInactive
	d.ExtensionInfo = append(json.RawMessage(nil), d.ExtensionInfo...)
	g.devices[d.DeviceID] = &subDev{DeviceInfo: d, addVersion: v}
	s.logChangeLocked(g, change{version: v, add: true, dev: d})
	return d, "", ""
}

func (s *Sim) logChangeLocked(g *gateway, c change) {
	if len(g.changes.items) >= g.changes.max {
		g.lastDrop = g.changes.items[0].version
		s.changesDropped++
	}
	g.changes.add(c)
}

// deleteRequestLocked applies delete_sub_device_request, answers it and
// sends the delete notification (iotda-protocol §3.8).
func (s *Sim) deleteRequestLocked(g *gateway, ev iotda.Event) []out {
	var p iotda.DeleteRequestParas
	_ = ev.DecodeParas(&p)
	var rsp iotda.DeleteResponseParas
	if n := len(p.Devices); n == 0 || n > iotda.MaxDeletePerRequest {
		s.errorfLocked(g.id, "%s with %d devices, want 1-%d", ev.EventType, n, iotda.MaxDeletePerRequest)
		for _, id := range p.Devices {
			rsp.FailedDevices = append(rsp.FailedDevices, iotda.FailedDevice{DeviceID: id, ErrorCode: CodeTooMany, ErrorMsg: "more than 50 devices in one request"})
		}
	} else {
		var removed []iotda.DeviceInfo
		for _, id := range p.Devices {
			info, code, msg := s.removeDeviceLocked(g, id, g.version+1)
			if code != "" {
				if code == CodeDeviceNotFound {
					s.errorfLocked(g.id, "delete of unknown sub-device %q", id)
				}
				rsp.FailedDevices = append(rsp.FailedDevices, iotda.FailedDevice{DeviceID: id, ErrorCode: code, ErrorMsg: msg})
				continue
			}
			removed = append(removed, info)
			rsp.SuccessfulDevices = append(rsp.SuccessfulDevices, id)
		}
		if len(removed) > 0 {
			g.version++
			s.notifyLocked()
			outs := s.mustDownEvent(g, g.id, iotda.ServiceSubDeviceManager, iotda.EventDeleteResponse, eventIDOrNew(ev), rsp)
			return append(outs, s.mustDownEvent(g, g.id, iotda.ServiceSubDeviceManager, iotda.EventDeleteNotify, "",
				iotda.NotifyParas{Version: g.version, Devices: removed})...)
		}
	}
	s.notifyLocked()
	return s.mustDownEvent(g, g.id, iotda.ServiceSubDeviceManager, iotda.EventDeleteResponse, eventIDOrNew(ev), rsp)
}

// removeDeviceLocked deletes a sub-device at list version v and logs the
// change; the notification carries parent, node and device id
// (iotda-protocol §3.5).
func (s *Sim) removeDeviceLocked(g *gateway, id string, v int64) (iotda.DeviceInfo, string, string) {
	d, ok := g.devices[id]
	if !ok {
		return iotda.DeviceInfo{}, CodeDeviceNotFound, "sub-device not found"
	}
	for _, od := range g.devices {
		if od.ParentDeviceID == id {
			return iotda.DeviceInfo{}, CodeHasChildren, "sub-device has sub-devices"
		}
	}
	delete(g.devices, id)
	delete(g.shadows, id)
	info := iotda.DeviceInfo{ParentDeviceID: d.ParentDeviceID, NodeID: d.NodeID, DeviceID: d.DeviceID}
	s.logChangeLocked(g, change{version: v, add: false, dev: info})
	return info, "", ""
}

// syncLocked answers sub_device_sync_request by replaying changes after
// the given version as ordinary add and delete notifications of at most
// MaxAddPerRequest devices each (iotda-protocol §3.6). Version 0 or absent
// (Appendix B item 3) — or a version older than the retained change log —
// replays the current list as add notifications. Each notification
// carries the version of its newest change, so a gateway applying the
// rule of §3.10 accepts every one in order.
func (s *Sim) syncLocked(g *gateway, ev iotda.Event) []out {
	var p iotda.SyncParas
	_ = ev.DecodeParas(&p)
	var notes []notice
	switch {
	case p.Version < 0:
		s.errorfLocked(g.id, "%s with negative version %d", ev.EventType, p.Version)
		return nil
	case p.Version > g.version:
		// The gateway is ahead of the platform (a simulator restart):
		// nothing is newer than what it has.
		s.log.Info("sync from a version ahead of the platform", "device_id", g.id, "n", p.Version)
		return nil
	case p.Version == 0 || p.Version < g.lastDrop:
		notes = fullList(g)
	default:
		var cs []change
		for _, c := range g.changes.items {
			if c.version > p.Version {
				cs = append(cs, c)
			}
		}
		notes = packChanges(cs)
	}
	var outs []out
	for _, n := range notes {
		et := iotda.EventAddNotify
		if !n.add {
			et = iotda.EventDeleteNotify
		}
		outs = append(outs, s.mustDownEvent(g, g.id, iotda.ServiceSubDeviceManager, et, "",
			iotda.NotifyParas{Version: n.version, Devices: n.devices})...)
	}
	return outs
}

// notice is one add or delete notification to send.
type notice struct {
	add     bool
	version int64
	devices []iotda.DeviceInfo
}

// packChanges packs changes (in version order) into notifications of one
// kind and at most MaxAddPerRequest devices, never splitting the changes
// of one version (a request changes at most 50 devices).
func packChanges(cs []change) []notice {
	var out []notice
	for i := 0; i < len(cs); {
		j := i
		for j < len(cs) && cs[j].version == cs[i].version && cs[j].add == cs[i].add {
			j++
		}
		group := cs[i:j]
		n := len(out)
		if n == 0 || out[n-1].add != group[0].add || len(out[n-1].devices)+len(group) > iotda.MaxAddPerRequest {
			out = append(out, notice{add: group[0].add})
			n++
		}
		for _, c := range group {
			out[n-1].devices = append(out[n-1].devices, c.dev)
		}
		out[n-1].version = group[0].version
		i = j
	}
	return out
}

// fullList returns the current sub-devices as add notifications in the
// order they were added; the last carries the current list version.
func fullList(g *gateway) []notice {
	if len(g.devices) == 0 {
		return nil
	}
	devs := make([]*subDev, 0, len(g.devices))
	for _, d := range g.devices {
		devs = append(devs, d)
	}
	sort.Slice(devs, func(i, j int) bool {
		if devs[i].addVersion != devs[j].addVersion {
			return devs[i].addVersion < devs[j].addVersion
		}
		return devs[i].DeviceID < devs[j].DeviceID
	})
	cs := make([]change, len(devs))
	for i, d := range devs {
		cs[i] = change{version: d.addVersion, add: true, dev: d.info()}
	}
	notes := packChanges(cs)
	notes[len(notes)-1].version = g.version
	return notes
}

// timeSyncLocked answers time_sync_request (iotda-protocol §5.2).
func (s *Sim) timeSyncLocked(g *gateway, ev iotda.Event, target string, u uplink) []out {
	var p iotda.TimeSyncRequestParas
	_ = ev.DecodeParas(&p)
	rsp := iotda.TimeSyncResponseParas{
		DeviceSendTime: p.DeviceSendTime,
		ServerRecvTime: u.at.UnixMilli(),
		ServerSendTime: s.now().UnixMilli(),
	}
	return s.mustDownEvent(g, target, iotda.ServiceTimeSync, iotda.EventTimeSyncResponse, "", rsp)
}

// responseLocked matches a command, property set or property get response
// to its pending request by request id and topic kind.
func (s *Sim) responseLocked(g *gateway, u uplink, kind iotda.Kind, rid string) {
	p, ok := s.pending[rid]
	if !ok || p.gw != g.id {
		s.errorfLocked(g.id, "%s for unknown or expired request_id %q", kind, rid)
		return
	}
	if p.kind != kind {
		s.errorfLocked(g.id, "request_id %q answered on the %s topic, want %s", rid, kind, p.kind)
		return
	}
	var err error
	switch kind {
	case iotda.KindCommandResponse:
		var r iotda.CommandResponse
		if err = decodeStrict(u.payload, &r); err == nil && len(r.Paras) > 0 && !isJSONObjectOrNull(r.Paras) {
			err = fmt.Errorf("paras must be an object")
		}
	case iotda.KindPropertySetResponse:
		err = decodeStrict(u.payload, new(iotda.PropertySetResponse))
	case iotda.KindPropertyGetResponse:
		var r iotda.PropertyGetResponse
		if err = decodeStrict(u.payload, &r); err == nil {
			for i, svc := range r.Services {
				if svc.ServiceID == "" {
					err = fmt.Errorf("services[%d]: empty service_id", i)
					break
				}
			}
		}
	}
	if err != nil {
		s.errorfLocked(g.id, "%s %q: %v", kind, rid, err)
		return
	}
	delete(s.pending, rid)
	p.ch <- bytes.Clone(u.payload)
}

func isJSONObjectOrNull(b json.RawMessage) bool {
	b = bytes.TrimSpace(b)
	return string(b) == "null" || (len(b) > 0 && b[0] == '{')
}

// shadowGetLocked answers a device's shadow request from the shadows set
// with SetShadow (iotda-protocol §2.7).
func (s *Sim) shadowGetLocked(g *gateway, u uplink, rid string) []out {
	var req iotda.ShadowGet
	if err := decodeStrict(u.payload, &req); err != nil {
		s.errorfLocked(g.id, "shadow get: %v", err)
		return nil
	}
	target := req.ObjectDeviceID
	if target == "" {
		target = g.id
	}
	if !g.known(target) {
		s.errorfLocked(g.id, "shadow get for unknown device %q", target)
		return nil
	}
	shadow := json.RawMessage("[]")
	if sh, ok := g.shadows[target]; ok {
		shadow = sh
		if req.ServiceID != "" {
			var entries []json.RawMessage
			_ = json.Unmarshal(sh, &entries) // SetShadow checked it
			var kept []json.RawMessage
			for _, e := range entries {
				var head struct {
					ServiceID string `json:"service_id"`
				}
				if json.Unmarshal(e, &head) == nil && head.ServiceID == req.ServiceID {
					kept = append(kept, e)
				}
			}
			shadow, _ = json.Marshal(kept)
			if len(kept) == 0 {
				shadow = json.RawMessage("[]")
			}
		}
	}
	b, err := json.Marshal(iotda.ShadowResponse{ObjectDeviceID: target, Shadow: shadow})
	if err != nil {
		s.log.Error("marshal shadow", "device_id", g.id, "err", err)
		return nil
	}
	return []out{{topic: iotda.TopicShadowResponse(g.id, rid), payload: b}}
}
