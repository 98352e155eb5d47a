package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/subgate/subgate/northbound/iotda"
	"github.com/subgate/subgate/southbound"
	"github.com/subgate/subgate/southbound/frame"
	"github.com/subgate/subgate/store"
	"github.com/subgate/subgate/subdevice"
)

var _ southbound.Handler = (*Gateway)(nil)

// Login decides whether a device may use the gateway. It runs on a
// southbound worker and never waits for the network: an unknown device is
// accepted as "registration pending" while the add request travels, and
// its data frames are answered busy until the platform confirmed it.
func (g *Gateway) Login(c *southbound.Conn, hello frame.Frame) error {
	if g.stopped.Load() {
		return frame.Errorf(frame.CodeShuttingDown, true, "the gateway is shutting down")
	}
	id := hello.NodeID
	var dev subdevice.Device
	var ok bool
	if c.Native() {
		dev, ok = g.devs.ByNode(id)
	} else {
		// The demo device sends what it calls its device id (iotda §6.1);
		// people typing with nc often send a node id.
		if dev, ok = g.devs.ByID(id); !ok {
			dev, ok = g.devs.ByNode(id)
		}
	}
	if ok {
		g.bind(c, dev.DeviceID)
		g.markOnline(c, dev.DeviceID, hello)
		return nil
	}
	node, deviceID, product, err := g.registrationIDs(c, hello)
	if err != nil {
		g.m.logins.WithLabelValues("refused").Inc()
		return err
	}
	dev, registered, err := g.regs.attach(c, node, deviceID, product, hello)
	switch {
	case err != nil:
		g.m.logins.WithLabelValues("refused").Inc()
		return frame.Errorf(frame.CodeBusy, true, "registration queue full, retry later")
	case registered:
		// Confirmed since the lookup above.
		g.bind(c, dev.DeviceID)
		g.markOnline(c, dev.DeviceID, hello)
		return nil
	}
	g.m.logins.WithLabelValues("pending").Inc()
	return nil
}

// bind records c as the live connection of deviceID.
func (g *Gateway) bind(c *southbound.Conn, deviceID string) {
	c.SetDeviceID(deviceID)
	if !c.Native() {
		// Only the demo flow needs per-connection gateway state.
		g.conns.Store(c, &connState{})
	}
	g.live.store(deviceID, c)
}

// unbind undoes bind for a login that is refused after all.
func (g *Gateway) unbind(c *southbound.Conn, deviceID string) {
	g.conns.Delete(c)
	g.live.compareAndDelete(deviceID, c)
}

// rebind moves c to the device id the platform assigned.
func (g *Gateway) rebind(c *southbound.Conn, deviceID string) {
	if old := c.DeviceID(); old != deviceID {
		g.live.compareAndDelete(old, c)
	}
	c.SetDeviceID(deviceID)
	g.live.store(deviceID, c)
}

// registrationIDs picks the ids of the add request for an unknown device.
func (g *Gateway) registrationIDs(c *southbound.Conn, hello frame.Frame) (node, deviceID, product string, err error) {
	sd := g.cfg.Subdevice
	if !sd.AutoRegister {
		return "", "", "", frame.Errorf(frame.CodeUnknownDevice, true,
			"%q is not a registered sub-device and auto-registration is off", hello.NodeID)
	}
	product = hello.ProductID
	if product == "" {
		product = sd.DefaultProductID
	}
	if product == "" {
		return "", "", "", frame.Errorf(frame.CodeUnknownDevice, true,
			"unknown device and no product id: send product_id in the hello or set subdevice.default_product_id")
	}
	if len(sd.AllowedProducts) > 0 && !slices.Contains(sd.AllowedProducts, product) {
		return "", "", "", frame.Errorf(frame.CodeUnknownDevice, true, "product %q may not be auto-registered", product)
	}
	if err := subdevice.ValidateProductID(product); err != nil {
		return "", "", "", frame.Errorf(frame.CodeBadFrame, true, "%v", err)
	}
	if c.Native() {
		node = hello.NodeID
		// The platform's own default form (iotda §0), chosen explicitly so
		// the device id is known before the platform answers.
		deviceID = product + "_" + node
	} else {
		// demo: the device sends a device id. Use it as sent; its node id
		// is what follows the product prefix when it has one (the Huawei
		// demo's convention), else the whole id. The platform's answer is
		// what gets stored (decisions.md D3).
		deviceID = hello.NodeID
		node = deviceID
		if rest, ok := strings.CutPrefix(deviceID, product+"_"); ok && rest != "" {
			node = rest
		}
	}
	if err := subdevice.ValidateNodeID(node); err != nil {
		return "", "", "", frame.Errorf(frame.CodeBadFrame, true, "%v", err)
	}
	if err := subdevice.ValidateDeviceID(deviceID); err != nil {
		return "", "", "", frame.Errorf(frame.CodeBadFrame, true, "%v", err)
	}
	return node, deviceID, product, nil
}

// markOnline records a live connection and queues the ONLINE status.
func (g *Gateway) markOnline(c *southbound.Conn, deviceID string, hello frame.Frame) {
	now := g.now()
	d, ok := g.devs.Update(deviceID, func(d *subdevice.Device) {
		d.Remote = c.Remote()
		d.ConnectedAt = now
		d.LastSeen = now
		if hello.FwVersion != "" {
			d.FwVersion = hello.FwVersion
		}
		if hello.SwVersion != "" {
			d.SwVersion = hello.SwVersion
		}
	})
	if !ok {
		return
	}
	g.m.logins.WithLabelValues("ok").Inc()
	g.status.set(deviceID, subdevice.Online)
	g.persistAsync(d)
	g.ota.online(c, deviceID)
}

// persistAsync writes a record through the store's writer without
// waiting. Connection bookkeeping (remote, times, versions) is best effort:
// losing it in a crash loses no device data.
func (g *Gateway) persistAsync(d subdevice.Device) {
	select {
	case g.regs.persist <- d.DeviceID:
	default:
		g.m.persistDropped.Inc()
		g.hit("persist_queue", "device_id", d.DeviceID)
	}
}

// Logout runs once per logged-in connection after it closed.
func (g *Gateway) Logout(c *southbound.Conn, reason error) {
	g.conns.Delete(c)
	id := c.DeviceID()
	g.corr.failConn(c, "device disconnected before answering")
	if id == "" {
		return
	}
	// Another connection may already have taken over (kick-old).
	if !g.live.compareAndDelete(id, c) {
		return
	}
	now := g.now()
	d, ok := g.devs.Update(id, func(d *subdevice.Device) {
		d.LastSeen = now
		d.ConnectedAt = time.Time{}
	})
	if !ok {
		return
	}
	g.status.set(id, subdevice.Offline)
	g.persistAsync(d)
	g.ota.offline(c, id)
}

// Frame handles one frame of a logged-in device, in order per connection.
func (g *Gateway) Frame(c *southbound.Conn, f frame.Frame) {
	id := c.DeviceID()
	// One registry operation per frame: touch last-seen and read the record.
	now := g.now()
	dev, registered := g.devs.Update(id, func(d *subdevice.Device) { d.LastSeen = now })
	if !c.Native() {
		st, _ := g.conns.Load(c)
		cs, _ := st.(*connState)
		g.demoFrame(c, cs, f, dev, registered)
		return
	}
	switch f.Type {
	case frame.TypeMessage, frame.TypeProperties, frame.TypeEvent:
		if !registered {
			g.sendErr(c, frame.CodeBusy, f.Seq, "", "registration pending: the platform has not confirmed this sub-device yet")
			return
		}
		it, err := g.uplinkItem(dev.DeviceID, f)
		if err != nil {
			g.sendErr(c, frame.CodeBadFrame, f.Seq, "", err.Error())
			return
		}
		g.appendUplink(c, it, f.Seq, nil)
	case frame.TypeCommandResponse, frame.TypePropertySetResponse, frame.TypePropertyGetResponse:
		g.corr.answer(c, f)
	case frame.TypeShadowGet:
		if !registered {
			g.sendErr(c, frame.CodeBusy, 0, f.RequestID, "registration pending")
			return
		}
		g.shadowGet(c, dev.DeviceID, f)
	case frame.TypeOTAAck, frame.TypeOTAResult:
		g.ota.frame(c, dev.DeviceID, f)
	default:
		g.sendErr(c, frame.CodeUnsupported, f.Seq, f.RequestID, fmt.Sprintf("a device may not send %s frames", f.Type))
	}
}

// demoFrame implements the Huawei demo device's flow (iotda §6.1): one text
// reply per message.
func (g *Gateway) demoFrame(c *southbound.Conn, cs *connState, f frame.Frame, dev subdevice.Device, registered bool) {
	id := c.DeviceID()
	first := cs != nil && cs.greeted.CompareAndSwap(false, true)
	if f.NodeID != "" && f.NodeID != id && f.NodeID != dev.NodeID {
		g.sendText(c, fmt.Sprintf("error: this connection belongs to %s, not %s", id, f.NodeID))
		return
	}
	if !registered {
		if first {
			g.sendText(c, fmt.Sprintf("sub device: %s add", id))
		} else {
			g.sendText(c, fmt.Sprintf("sub device: %s add pending; message not forwarded", id))
		}
		return
	}
	content := string(f.Content)
	if content == "gtwdel" {
		g.regs.requestDelete(dev.DeviceID, nil)
		g.sendText(c, fmt.Sprintf("sub device: %s delete", id))
		return
	}
	reply := fmt.Sprintf("sub device: %s report message", id)
	if first {
		reply = fmt.Sprintf("sub device: %s go online", id)
	}
	if content == "" {
		g.sendText(c, reply)
		return
	}
	it, err := g.uplinkItem(dev.DeviceID, f)
	if err != nil {
		g.sendText(c, "error: "+err.Error())
		return
	}
	g.appendUplink(c, it, 0, func(err error) {
		if err != nil {
			g.sendText(c, fmt.Sprintf("error: %s not accepted: %v", id, err))
			return
		}
		g.sendText(c, reply)
	})
}

func (g *Gateway) sendText(c *southbound.Conn, s string) {
	if err := c.Send(frame.Frame{Type: frame.TypeMessage, Content: []byte(s)}); err != nil {
		g.m.sendErrors.Inc()
	}
}

func (g *Gateway) sendErr(c *southbound.Conn, code frame.ErrorCode, seq uint32, rid, reason string) {
	if err := c.Send(frame.Frame{Type: frame.TypeError, Code: code, Seq: seq, RequestID: rid, Reason: reason}); err != nil {
		g.m.sendErrors.Inc()
	}
}

// uplinkItem turns a device data frame into an outbox item carrying the
// per-device JSON fragment the publisher packs.
func (g *Gateway) uplinkItem(deviceID string, f frame.Frame) (store.Item, error) {
	it := store.Item{DeviceID: deviceID, Enqueued: g.now()}
	if t, ok := g.custom.byName[f.Name]; ok && f.Type == frame.TypeMessage && t.up {
		if !utf8.Valid(f.Content) {
			return it, errors.New("message content must be UTF-8 (IoTDA payloads are UTF-8)")
		}
		payload, err := customUpPayload(deviceID, f)
		if err != nil {
			return it, err
		}
		it.Kind, it.Topic, it.Payload = store.KindCustom, t.topic, payload
		return it, nil
	}
	switch f.Type {
	case frame.TypeMessage:
		if !utf8.Valid(f.Content) {
			return it, errors.New("message content must be UTF-8 (IoTDA payloads are UTF-8)")
		}
		var content json.RawMessage
		if len(f.Content) > 0 && f.Content[0] == '{' && json.Valid(f.Content) {
			content = f.Content
		} else {
			b, _ := json.Marshal(string(f.Content))
			content = b
		}
		payload, err := json.Marshal(iotda.MessageUp{ObjectDeviceID: deviceID, Name: f.Name, Content: content})
		if err != nil {
			return it, err
		}
		it.Kind, it.Payload = store.KindMessage, payload
	case frame.TypeProperties:
		svcs, err := checkServices(f.Services)
		if err != nil {
			return it, err
		}
		g.props.put(deviceID, svcs)
		it.Kind, it.Payload = store.KindProperties, append([]byte(nil), f.Services...)
	case frame.TypeEvent:
		if f.ServiceID == "" || f.EventType == "" {
			return it, errors.New("an event needs service_id and event_type")
		}
		if strings.HasPrefix(f.ServiceID, "$") {
			return it, fmt.Errorf("service %q is reserved for the gateway", f.ServiceID)
		}
		paras := f.Paras
		if len(paras) == 0 {
			paras = json.RawMessage("{}")
		}
		payload, err := iotda.NewEvents(deviceID, f.ServiceID, f.EventType, "", g.platformNow(), paras)
		if err != nil {
			return it, err
		}
		it.Kind, it.Payload = store.KindEvent, payload
	}
	return it, nil
}

// checkServices validates a services array (iotda §2.2) and stamps a
// missing event_time with the platform-corrected time.
func checkServices(raw json.RawMessage) ([]iotda.Service, error) {
	var svcs []iotda.Service
	if err := json.Unmarshal(raw, &svcs); err != nil {
		return nil, fmt.Errorf("services must be an array of {service_id, properties}: %v", err)
	}
	if len(svcs) == 0 {
		return nil, errors.New("services is empty")
	}
	for _, s := range svcs {
		if s.ServiceID == "" {
			return nil, errors.New("every service needs a service_id")
		}
		if len(s.Properties) == 0 || s.Properties[0] != '{' {
			return nil, fmt.Errorf("service %q: properties must be an object", s.ServiceID)
		}
	}
	return svcs, nil
}

// appendUplink makes an item durable without blocking the worker; the
// device gets its ack (seq != 0) or busy error once the commit returned.
func (g *Gateway) appendUplink(c *southbound.Conn, it store.Item, seq uint32, done func(error)) {
	kind := it.Kind.String()
	err := g.st.AppendAsync(it, func(s uint64, err error) {
		if err == nil {
			for {
				cur := g.lastSeq.Load()
				if s <= cur || g.lastSeq.CompareAndSwap(cur, s) {
					break
				}
			}
			g.m.upAccepted.WithLabelValues(kind).Inc()
			if seq != 0 {
				_ = c.Send(frame.Frame{Type: frame.TypeAck, Seq: seq})
			}
		} else {
			g.m.upRejected.WithLabelValues(rejectReason(err)).Inc()
			if seq != 0 {
				g.sendErr(c, frame.CodeBusy, seq, "", "not accepted: "+err.Error())
			}
		}
		if done != nil {
			done(err)
		}
	})
	if err != nil {
		g.m.upRejected.WithLabelValues(rejectReason(err)).Inc()
		if done != nil {
			done(err)
			return
		}
		g.sendErr(c, frame.CodeBusy, seq, "", "not accepted: "+err.Error())
	}
}

func rejectReason(err error) string {
	switch {
	case errors.Is(err, store.ErrOutboxFull):
		return "outbox_full"
	case errors.Is(err, store.ErrBusy):
		return "store_busy"
	case errors.Is(err, store.ErrClosed):
		return "closed"
	default:
		return "error"
	}
}
