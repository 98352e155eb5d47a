package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/subgate/subgate/northbound"
	"github.com/subgate/subgate/northbound/iotda"
	"github.com/subgate/subgate/southbound"
	"github.com/subgate/subgate/southbound/frame"
)

// Result codes the gateway itself puts in failure responses. The platform
// treats any non-zero result_code as failure (iotda §2.4, §2.6).
const (
	resultFailed = 1
)

// downlinkLoop dispatches platform messages by topic (iotda §2.9). It never
// blocks on a device: frames go out with AsyncWrite and answers are queued.
func (g *Gateway) downlinkLoop(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-g.north.Messages():
			g.dispatch(m)
		}
	}
}

func (g *Gateway) dispatch(m northbound.Message) {
	if t, ok := g.custom.byTopic[m.Topic]; ok && t.down {
		g.customDown(t, m)
		return
	}
	dev, kind, rid, err := iotda.ParseTopic(m.Topic)
	if err != nil || dev != g.gw {
		g.m.downlink.WithLabelValues("unknown", "bad_topic").Inc()
		g.log.Warn("downlink on an unexpected topic", "component", "gateway", "topic", m.Topic, "err", err)
		return
	}
	switch kind {
	case iotda.KindCommand:
		var cmd iotda.Command
		if err := json.Unmarshal(m.Payload, &cmd); err != nil {
			g.m.downlink.WithLabelValues("command", "bad_request").Inc()
			g.respond(kindCommand, rid, failure(kindCommand, "bad command payload: "+err.Error()))
			return
		}
		g.corr.request(kindCommand, rid, cmd.ObjectDeviceID, frame.Frame{
			Type: frame.TypeCommand, RequestID: rid, ServiceID: cmd.ServiceID,
			CommandName: cmd.CommandName, Paras: cmd.Paras,
		})
	case iotda.KindPropertySet:
		var ps iotda.PropertySet
		if err := json.Unmarshal(m.Payload, &ps); err != nil {
			g.m.downlink.WithLabelValues("property_set", "bad_request").Inc()
			g.respond(kindPropSet, rid, failure(kindPropSet, "bad property set payload: "+err.Error()))
			return
		}
		svcs, _ := json.Marshal(ps.Services)
		g.corr.request(kindPropSet, rid, ps.ObjectDeviceID, frame.Frame{
			Type: frame.TypePropertySet, RequestID: rid, Services: svcs,
		})
	case iotda.KindPropertyGet:
		var pg iotda.PropertyGet
		if err := json.Unmarshal(m.Payload, &pg); err != nil {
			g.m.downlink.WithLabelValues("property_get", "bad_request").Inc()
			g.respond(kindPropGet, rid, failure(kindPropGet, "bad property get payload: "+err.Error()))
			return
		}
		g.corr.request(kindPropGet, rid, pg.ObjectDeviceID, frame.Frame{
			Type: frame.TypePropertyGet, RequestID: rid, ServiceID: pg.ServiceID,
		})
	case iotda.KindMessage:
		g.messageDown(m.Payload)
	case iotda.KindShadowResponse:
		g.shadowResponse(rid, m.Payload)
	case iotda.KindEvent:
		g.eventsDown(m.Payload)
	default:
		g.m.downlink.WithLabelValues(kind.String(), "ignored").Inc()
		g.log.Debug("downlink ignored", "component", "gateway", "topic", m.Topic)
	}
}

// messageDown forwards a system-format message to its sub-device (§2.1).
func (g *Gateway) messageDown(payload []byte) {
	msg, system := iotda.ParseMessageDown(payload)
	if !system || msg.ObjectDeviceID == "" || msg.ObjectDeviceID == g.gw {
		g.m.downlink.WithLabelValues("message", "for_gateway").Inc()
		g.log.Info("message for the gateway itself", "component", "gateway", "n", len(payload))
		return
	}
	c, ok := g.connByDevice(msg.ObjectDeviceID)
	if !ok {
		g.m.downlink.WithLabelValues("message", "offline").Inc()
		g.log.Info("message for an offline or unknown sub-device dropped", "component", "gateway", "device_id", msg.ObjectDeviceID)
		return
	}
	err := c.Send(frame.Frame{Type: frame.TypeMessage, Name: msg.Name, Content: msg.ContentBytes()})
	g.m.downlink.WithLabelValues("message", resultLabel(err)).Inc()
}

// connByDevice returns the live connection of a sub-device.
func (g *Gateway) connByDevice(deviceID string) (*southbound.Conn, bool) {
	c, ok := g.live.load(deviceID)
	if !ok {
		return nil, false
	}
	if c.DeviceID() != deviceID {
		return nil, false
	}
	return c, true
}

func resultLabel(err error) string {
	if err != nil {
		return "send_failed"
	}
	return "ok"
}

type reqKind uint8

const (
	kindCommand reqKind = iota
	kindPropSet
	kindPropGet
)

var reqKindNames = [...]string{"command", "property_set", "property_get"}

func (k reqKind) String() string { return reqKindNames[k] }

// failure builds the platform response for a request the gateway answers
// itself.
func failure(k reqKind, why string) []byte {
	var v any
	switch k {
	case kindCommand:
		paras, _ := json.Marshal(map[string]string{"error": why})
		v = iotda.CommandResponse{ResultCode: resultFailed, ResponseName: "subgate_error", Paras: paras}
	case kindPropSet:
		v = iotda.PropertySetResponse{ResultCode: resultFailed, ResultDesc: why}
	case kindPropGet:
		// The get response has no result code (§2.5): an empty services
		// list, in exactly the documented shape, says nothing is known
		// (decisions D9). The reason is in the gateway's log and metrics.
		v = iotda.PropertyGetResponse{Services: []iotda.Service{}}
	}
	b, _ := json.Marshal(v)
	return b
}

func (g *Gateway) respond(k reqKind, rid string, payload []byte) {
	var topic string
	switch k {
	case kindCommand:
		topic = iotda.TopicCommandResponse(g.gw, rid)
	case kindPropSet:
		topic = iotda.TopicPropertySetResponse(g.gw, rid)
	case kindPropGet:
		topic = iotda.TopicPropertyGetResponse(g.gw, rid)
	}
	g.enqueueControl(ClassResponse, k.String()+"_response", topic, payload, nil)
}

// pendingReq is a platform request waiting for a device's answer.
type pendingReq struct {
	kind     reqKind
	rid      string
	deviceID string
	conn     *southbound.Conn
	start    time.Time
	deadline time.Time
}

// correlator owns request_id -> pending request. One mutex guards the map;
// a sweeper goroutine fails requests past their deadline.
type correlator struct {
	g *Gateway
	// mu guards the following fields.
	mu      sync.Mutex
	pending map[string]*pendingReq
}

func newCorrelator(g *Gateway) *correlator {
	return &correlator{g: g, pending: make(map[string]*pendingReq)}
}

// request routes a platform request to its sub-device's connection.
func (c *correlator) request(k reqKind, rid, deviceID string, f frame.Frame) {
	g := c.g
	if deviceID == "" || deviceID == g.gw {
		g.m.downlink.WithLabelValues(k.String(), "for_gateway").Inc()
		g.respond(k, rid, failure(k, "the gateway itself has no "+k.String()+" handler; address a sub-device with object_device_id"))
		return
	}
	dev, known := g.devs.ByID(deviceID)
	if !known {
		g.m.downlink.WithLabelValues(k.String(), "unknown_device").Inc()
		g.respond(k, rid, failure(k, fmt.Sprintf("sub-device %s is unknown to this gateway", deviceID)))
		return
	}
	conn, online := g.connByDevice(deviceID)
	if k == kindPropGet && g.cfg.Subdevice.PropertyGetFromCache && (!online || !conn.Native()) {
		if b, ok := g.props.answer(deviceID, f.ServiceID); ok {
			g.m.downlink.WithLabelValues(k.String(), "ok_cache").Inc()
			g.respond(k, rid, b)
			return
		}
	}
	if !online {
		g.m.downlink.WithLabelValues(k.String(), "offline").Inc()
		g.respond(k, rid, failure(k, fmt.Sprintf("sub-device %s (node %s) is offline", deviceID, dev.NodeID)))
		return
	}
	now := g.now()
	timeout := g.cfg.Subdevice.PropertyTimeout
	if k == kindCommand {
		timeout = g.cfg.Subdevice.CommandTimeout
	}
	if !conn.Native() {
		// The demo protocol cannot carry the device's answer (issue 2):
		// answer once the request was written to the device's socket, and
		// say so.
		if k == kindPropGet {
			g.m.downlink.WithLabelValues(k.String(), "unsupported").Inc()
			g.respond(k, rid, failure(k, "the demo protocol cannot carry property values and none were reported yet"))
			return
		}
		err := conn.SendThen(f, func(err error) {
			if err != nil {
				g.m.downlink.WithLabelValues(k.String(), "send_failed").Inc()
				g.respond(k, rid, failure(k, "writing to the device failed: "+err.Error()))
				return
			}
			g.m.downlink.WithLabelValues(k.String(), "ok_written").Inc()
			g.m.roundtrip.WithLabelValues(k.String()).Observe(g.now().Sub(now).Seconds())
			g.respond(k, rid, demoAnswer(k))
		})
		if err != nil {
			g.m.downlink.WithLabelValues(k.String(), "send_failed").Inc()
			g.respond(k, rid, failure(k, "writing to the device failed: "+err.Error()))
		}
		return
	}
	c.mu.Lock()
	if len(c.pending) >= g.cfg.Subdevice.MaxPending {
		c.mu.Unlock()
		g.m.downlink.WithLabelValues(k.String(), "too_many_pending").Inc()
		g.hit("max_pending", "request_id", rid, "max", g.cfg.Subdevice.MaxPending)
		g.respond(k, rid, failure(k, "the gateway has too many requests in flight"))
		return
	}
	if _, dup := c.pending[rid]; dup {
		c.mu.Unlock()
		g.m.downlink.WithLabelValues(k.String(), "duplicate").Inc()
		return
	}
	c.pending[rid] = &pendingReq{kind: k, rid: rid, deviceID: deviceID, conn: conn, start: now, deadline: now.Add(timeout)}
	c.mu.Unlock()
	if err := conn.Send(f); err != nil {
		if c.take(rid) != nil {
			g.m.downlink.WithLabelValues(k.String(), "send_failed").Inc()
			g.respond(k, rid, failure(k, "writing to the device failed: "+err.Error()))
		}
	}
}

func demoAnswer(k reqKind) []byte {
	note := "written to the device's socket; the demo protocol cannot carry the device's own answer"
	var v any
	switch k {
	case kindCommand:
		paras, _ := json.Marshal(map[string]string{"result": "delivered", "note": note})
		v = iotda.CommandResponse{ResultCode: 0, ResponseName: "subgate_delivered", Paras: paras}
	default:
		v = iotda.PropertySetResponse{ResultCode: 0, ResultDesc: note}
	}
	b, _ := json.Marshal(v)
	return b
}

func (c *correlator) take(rid string) *pendingReq {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.pending[rid]
	delete(c.pending, rid)
	return p
}

// answer matches a device's response frame to its pending request.
func (c *correlator) answer(conn *southbound.Conn, f frame.Frame) {
	g := c.g
	c.mu.Lock()
	p, ok := c.pending[f.RequestID]
	if ok && p.conn == conn && matches(p.kind, f.Type) {
		delete(c.pending, f.RequestID)
	} else {
		ok = false
	}
	c.mu.Unlock()
	if !ok {
		g.m.lateAnswers.Inc()
		g.log.Debug("answer without a pending request (late or unknown), dropped", "component", "gateway",
			"device_id", conn.DeviceID(), "request_id", f.RequestID)
		return
	}
	var payload []byte
	switch p.kind {
	case kindCommand:
		payload, _ = json.Marshal(iotda.CommandResponse{ResultCode: int(f.ResultCode), ResponseName: f.ResponseName, Paras: f.Paras})
	case kindPropSet:
		payload, _ = json.Marshal(iotda.PropertySetResponse{ResultCode: int(f.ResultCode), ResultDesc: f.ResultDesc})
	case kindPropGet:
		var svcs []iotda.Service
		if len(f.Services) > 0 {
			if _, err := checkServices(f.Services); err != nil {
				payload = failure(kindPropGet, "the device answered with bad services: "+err.Error())
				break
			}
			_ = json.Unmarshal(f.Services, &svcs)
		}
		if payload == nil {
			payload, _ = json.Marshal(iotda.PropertyGetResponse{Services: svcs})
		}
	}
	g.m.downlink.WithLabelValues(p.kind.String(), "ok").Inc()
	g.m.roundtrip.WithLabelValues(p.kind.String()).Observe(g.now().Sub(p.start).Seconds())
	g.respond(p.kind, p.rid, payload)
}

func matches(k reqKind, t frame.Type) bool {
	switch k {
	case kindCommand:
		return t == frame.TypeCommandResponse
	case kindPropSet:
		return t == frame.TypePropertySetResponse
	default:
		return t == frame.TypePropertyGetResponse
	}
}

// failConn fails every request pending on a closed connection at once.
func (c *correlator) failConn(conn *southbound.Conn, why string) {
	var failed []*pendingReq
	c.mu.Lock()
	for rid, p := range c.pending {
		if p.conn == conn {
			failed = append(failed, p)
			delete(c.pending, rid)
		}
	}
	c.mu.Unlock()
	for _, p := range failed {
		c.g.m.downlink.WithLabelValues(p.kind.String(), "disconnected").Inc()
		c.g.respond(p.kind, p.rid, failure(p.kind, why))
	}
}

// run fails requests past their deadline (checked every 100 ms).
func (c *correlator) run(ctx context.Context) error {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			c.failAll("the gateway is shutting down")
			return nil
		case <-t.C:
		}
		now := c.g.now()
		var expired []*pendingReq
		c.mu.Lock()
		for rid, p := range c.pending {
			if now.After(p.deadline) {
				expired = append(expired, p)
				delete(c.pending, rid)
			}
		}
		c.mu.Unlock()
		for _, p := range expired {
			g := c.g
			if p.kind == kindPropGet && g.cfg.Subdevice.PropertyGetFromCache {
				if b, ok := g.props.answer(p.deviceID, ""); ok {
					g.m.downlink.WithLabelValues(p.kind.String(), "ok_cache").Inc()
					g.respond(p.kind, p.rid, b)
					continue
				}
			}
			g.m.downlink.WithLabelValues(p.kind.String(), "timeout").Inc()
			g.respond(p.kind, p.rid, failure(p.kind, fmt.Sprintf("sub-device %s did not answer within %s",
				p.deviceID, p.deadline.Sub(p.start).Round(time.Millisecond))))
		}
	}
}

func (c *correlator) failAll(why string) {
	c.mu.Lock()
	all := c.pending
	c.pending = make(map[string]*pendingReq)
	c.mu.Unlock()
	for _, p := range all {
		c.g.respond(p.kind, p.rid, failure(p.kind, why))
	}
}

func (c *correlator) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending)
}

// propCache keeps the last reported properties per device and service, to
// answer property get when configured (issue 5).
type propCache struct {
	mu sync.Mutex
	m  map[string]map[string]iotda.Service
}

func newPropCache() *propCache { return &propCache{m: make(map[string]map[string]iotda.Service)} }

func (p *propCache) put(deviceID string, svcs []iotda.Service) {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := p.m[deviceID]
	if m == nil {
		m = make(map[string]iotda.Service, len(svcs))
		p.m[deviceID] = m
	}
	for _, s := range svcs {
		m[s.ServiceID] = s
	}
}

func (p *propCache) drop(deviceID string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.m, deviceID)
}

// answer returns a property get response from the cache.
func (p *propCache) answer(deviceID, serviceID string) ([]byte, bool) {
	p.mu.Lock()
	m := p.m[deviceID]
	var svcs []iotda.Service
	for id, s := range m {
		if serviceID == "" || id == serviceID {
			svcs = append(svcs, s)
		}
	}
	p.mu.Unlock()
	if len(svcs) == 0 {
		return nil, false
	}
	b, _ := json.Marshal(iotda.PropertyGetResponse{Services: svcs})
	return b, true
}

// shadow requests of devices: the gateway's request id -> device and the
// device's own request id.
type shadowReq struct {
	conn     *southbound.Conn
	deviceID string
	rid      string
	at       time.Time
}

func (g *Gateway) shadowGet(c *southbound.Conn, deviceID string, f frame.Frame) {
	rid := fmt.Sprintf("sg-shadow-%d", g.shadowSeq.Add(1))
	g.shadowMu.Lock()
	if g.shadows == nil {
		g.shadows = map[string]shadowReq{}
	}
	m := g.shadows
	// Bound the table: answers older than the command timeout are gone.
	now := g.now()
	if len(m) > 10000 {
		for k, v := range m {
			if now.Sub(v.at) > g.cfg.Subdevice.CommandTimeout {
				delete(m, k)
			}
		}
	}
	m[rid] = shadowReq{conn: c, deviceID: deviceID, rid: f.RequestID, at: now}
	g.shadowMu.Unlock()
	payload, _ := json.Marshal(iotda.ShadowGet{ObjectDeviceID: deviceID, ServiceID: f.ServiceID})
	g.enqueueControl(ClassResponse, "shadow_get", iotda.TopicShadowGet(g.gw, rid), payload, func(err error) {
		if err != nil {
			g.sendErr(c, frame.CodeBusy, 0, f.RequestID, "shadow request not sent: "+err.Error())
		}
	})
}

func (g *Gateway) shadowResponse(rid string, payload []byte) {
	g.shadowMu.Lock()
	req, ok := g.shadows[rid]
	delete(g.shadows, rid)
	g.shadowMu.Unlock()
	if !ok {
		g.m.downlink.WithLabelValues("shadow", "unknown_request").Inc()
		return
	}
	var sr iotda.ShadowResponse
	if err := json.Unmarshal(payload, &sr); err != nil {
		g.sendErr(req.conn, frame.CodeRefused, 0, req.rid, "bad shadow response from the platform")
		return
	}
	err := req.conn.Send(frame.Frame{Type: frame.TypeShadow, RequestID: req.rid, Paras: sr.Shadow})
	g.m.downlink.WithLabelValues("shadow", resultLabel(err)).Inc()
}

// eventsDown handles sys/events/down (iotda §2.8).
func (g *Gateway) eventsDown(payload []byte) {
	evs, err := iotda.ParseEvents(payload)
	if err != nil {
		g.m.downlink.WithLabelValues("event", "bad_request").Inc()
		g.log.Warn("bad event from the platform", "component", "gateway", "err", err)
		return
	}
	for _, ev := range evs.Services {
		switch ev.ServiceID {
		case iotda.ServiceSubDeviceManager:
			g.regs.event(ev)
		case iotda.ServiceTimeSync:
			if ev.EventType == iotda.EventTimeSyncResponse {
				var p iotda.TimeSyncResponseParas
				if json.Unmarshal(ev.Paras, &p) == nil && p.ServerSendTime > 0 {
					recv := g.now().UnixMilli()
					off := iotda.SyncedNow(p, recv) - recv
					g.timeOff.Store(off)
					g.m.timeOffset.Set(float64(off) / 1000)
				}
			}
		case iotda.ServiceOTA:
			g.ota.event(evs.ObjectDeviceID, ev)
		case iotda.ServiceLog:
			if evs.ObjectDeviceID == "" || evs.ObjectDeviceID == g.gw {
				g.logConfigEvent(ev)
			}
		default:
			target := evs.ObjectDeviceID
			c, ok := g.connByDevice(target)
			if !ok || !c.Native() {
				g.m.downlink.WithLabelValues("event", "undeliverable").Inc()
				g.log.Info("event not deliverable", "component", "gateway", "device_id", target, "service", ev.ServiceID)
				continue
			}
			err := c.Send(frame.Frame{Type: frame.TypeEvent, ServiceID: ev.ServiceID, EventType: ev.EventType, Paras: ev.Paras})
			g.m.downlink.WithLabelValues("event", resultLabel(err)).Inc()
		}
	}
}
