package iotdasim

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/subgate/subgate/northbound/iotda"
	"github.com/subgate/subgate/subdevice"
)

// targetLocked resolves the object_device_id of a downstream request: "" or the
// gateway id address the gateway itself and are left out; anything else
// must be one of its sub-devices. Call with s.mu held.
func (s *Sim) targetLocked(gw, sub string) (*gateway, string, error) {
	g := s.gateways[gw]
	if g == nil {
		return nil, "", fmt.Errorf("%w: %q", ErrUnknownGateway, gw)
	}
	if sub == "" || sub == gw {
		return g, "", nil
	}
	if _, ok := g.devices[sub]; !ok {
		return nil, "", fmt.Errorf("%w: %q under %q", ErrUnknownDevice, sub, gw)
	}
	return g, sub, nil
}

// request publishes a downstream request with a fresh request id and
// waits for the response on the topic of kind want. ctx bounds the wait;
// without a deadline the platform's timeout (Config.CommandTimeout)
// applies (iotda-protocol §2.6).
func (s *Sim) request(ctx context.Context, gw, sub string, want iotda.Kind, topic func(gw, rid string) string,
	body func(object string) any) ([]byte, error) {
	s.mu.Lock()
	if err := s.usableLocked(); err != nil {
		s.mu.Unlock()
		return nil, err
	}
	g, object, err := s.targetLocked(gw, sub)
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	if g.conn == nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: %q", ErrNotConnected, gw)
	}
	payload, err := json.Marshal(body(object))
	if err != nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("iotdasim: marshal request: %w", err)
	}
	rid := newID()
	p := &pendingReq{gw: gw, kind: want, ch: make(chan []byte, 1)}
	s.pending[rid] = p
	stop := s.stop
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.pending, rid)
		s.mu.Unlock()
	}()

	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.cfg.CommandTimeout)
		defer cancel()
	}
	if err := s.publish(topic(gw, rid), payload); err != nil {
		return nil, err
	}
	select {
	case b := <-p.ch:
		return b, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %s request_id %s: %w", ErrTimeout, want, rid, ctx.Err())
	case <-stop:
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.state == stateClosed {
			return nil, ErrClosed
		}
		return nil, ErrStopped
	}
}

// usableLocked reports whether downstream traffic can be sent.
func (s *Sim) usableLocked() error {
	switch s.state {
	case stateNew:
		return ErrNotStarted
	case stateStopped:
		return ErrStopped
	case stateClosed:
		return ErrClosed
	}
	return nil
}

// Command sends a command to sub (a sub-device of gw, or "" or gw for the
// gateway itself) and returns the device's response (iotda-protocol §2.6).
// nil paras are sent as {} because paras is required.
func (s *Sim) Command(ctx context.Context, gw, sub, serviceID, commandName string, paras json.RawMessage) (iotda.CommandResponse, error) {
	if len(bytes.TrimSpace(paras)) == 0 {
		paras = json.RawMessage("{}")
	} else if !json.Valid(paras) {
		return iotda.CommandResponse{}, fmt.Errorf("iotdasim: command paras are not valid JSON")
	}
	b, err := s.request(ctx, gw, sub, iotda.KindCommandResponse, iotda.TopicCommand, func(object string) any {
		return iotda.Command{ObjectDeviceID: object, ServiceID: serviceID, CommandName: commandName, Paras: paras}
	})
	if err != nil {
		return iotda.CommandResponse{}, err
	}
	var r iotda.CommandResponse
	err = json.Unmarshal(b, &r) // validated by the platform goroutine
	return r, err
}

// SetProperties sends a property set to sub and returns the response
// (iotda-protocol §2.4).
func (s *Sim) SetProperties(ctx context.Context, gw, sub string, services []iotda.Service) (iotda.PropertySetResponse, error) {
	b, err := s.request(ctx, gw, sub, iotda.KindPropertySetResponse, iotda.TopicPropertySet, func(object string) any {
		return iotda.PropertySet{ObjectDeviceID: object, Services: services}
	})
	if err != nil {
		return iotda.PropertySetResponse{}, err
	}
	var r iotda.PropertySetResponse
	err = json.Unmarshal(b, &r)
	return r, err
}

// GetProperties sends a property get to sub ("" serviceID = all
// services) and returns the response (iotda-protocol §2.5).
func (s *Sim) GetProperties(ctx context.Context, gw, sub, serviceID string) (iotda.PropertyGetResponse, error) {
	b, err := s.request(ctx, gw, sub, iotda.KindPropertyGetResponse, iotda.TopicPropertyGet, func(object string) any {
		return iotda.PropertyGet{ObjectDeviceID: object, ServiceID: serviceID}
	})
	if err != nil {
		return iotda.PropertyGetResponse{}, err
	}
	var r iotda.PropertyGetResponse
	err = json.Unmarshal(b, &r)
	return r, err
}

// oneWay checks the gateway and target and builds a payload, then
// publishes it. Messages to a disconnected gateway are refused, as the
// platform refuses immediate delivery to an offline device.
func (s *Sim) oneWay(gw, sub string, topic string, body func(object string) ([]byte, error)) error {
	s.mu.Lock()
	if err := s.usableLocked(); err != nil {
		s.mu.Unlock()
		return err
	}
	g, object, err := s.targetLocked(gw, sub)
	if err == nil && g.conn == nil {
		err = fmt.Errorf("%w: %q", ErrNotConnected, gw)
	}
	s.mu.Unlock()
	if err != nil {
		return err
	}
	b, err := body(object)
	if err != nil {
		return err
	}
	return s.publish(topic, b)
}

// SendMessage sends a system-format message to sub (iotda-protocol §2.1).
// content must be a JSON string or a JSON object.
func (s *Sim) SendMessage(gw, sub string, content json.RawMessage) error {
	c := bytes.TrimSpace(content)
	if len(c) == 0 || (c[0] != '"' && c[0] != '{') || !json.Valid(c) {
		return fmt.Errorf("iotdasim: message content must be a JSON string or object")
	}
	return s.oneWay(gw, sub, iotda.TopicMessagesDown(gw), func(object string) ([]byte, error) {
		return json.Marshal(iotda.MessageDown{ObjectDeviceID: object, ID: newID(), Content: c})
	})
}

// SendRawMessage sends payload as is on the gateway's messages/down topic
// (a custom-format message; iotda-protocol §2.1).
func (s *Sim) SendRawMessage(gw string, payload []byte) error {
	if len(payload) > iotda.MaxPublishSize {
		return fmt.Errorf("iotdasim: message over %d bytes", iotda.MaxPublishSize)
	}
	p := bytes.Clone(payload)
	return s.oneWay(gw, "", iotda.TopicMessagesDown(gw), func(string) ([]byte, error) { return p, nil })
}

// SendEvent sends one downstream system event; object_device_id is sub, or
// the gateway id when sub is "" (iotda-protocol §2.8).
func (s *Sim) SendEvent(gw, sub, serviceID, eventType string, paras any) error {
	return s.oneWay(gw, sub, iotda.TopicEventsDown(gw), func(object string) ([]byte, error) {
		if object == "" {
			object = gw
		}
		return iotda.NewEvents(object, serviceID, eventType, "", s.now(), paras)
	})
}

// AddDevice adds a sub-device from the "console": NodeID and ProductID are
// required, DeviceID defaults to ProductID_NodeID, ParentDeviceID to gw;
// the status starts INACTIVE. The list version is bumped and an add
// notification is sent when the gateway is connected (iotda-protocol
// §3.4); otherwise the gateway learns it by sync.
func (s *Sim) AddDevice(gw string, d iotda.DeviceInfo) (iotda.DeviceInfo, error) {
	if err := subdevice.ValidateNodeID(d.NodeID); err != nil {
		return iotda.DeviceInfo{}, err
	}
	if err := subdevice.ValidateProductID(d.ProductID); err != nil {
		return iotda.DeviceInfo{}, err
	}
	if len(d.ExtensionInfo) > 0 && (len(d.ExtensionInfo) > iotda.MaxExtensionInfoSize || !isJSONObjectOrNull(d.ExtensionInfo) || !json.Valid(d.ExtensionInfo)) {
		return iotda.DeviceInfo{}, fmt.Errorf("iotdasim: extension_info must be a JSON object of at most %d bytes", iotda.MaxExtensionInfoSize)
	}
	s.mu.Lock()
	g := s.gateways[gw]
	if g == nil {
		s.mu.Unlock()
		return iotda.DeviceInfo{}, fmt.Errorf("%w: %q", ErrUnknownGateway, gw)
	}
	d.Status = ""
	info, code, msg := s.newDeviceLocked(g, d, g.version+1)
	if code != "" {
		s.mu.Unlock()
		if code == CodeDeviceExists || code == CodeNodeExists {
			return iotda.DeviceInfo{}, fmt.Errorf("%w: %s", ErrDeviceExists, msg)
		}
		return iotda.DeviceInfo{}, fmt.Errorf("iotdasim: add device: %s: %s", code, msg)
	}
	g.version++
	notify := g.conn != nil
	var o []out
	if notify {
		o = s.mustDownEvent(g, g.id, iotda.ServiceSubDeviceManager, iotda.EventAddNotify, "",
			iotda.NotifyParas{Version: g.version, Devices: []iotda.DeviceInfo{info}})
	}
	s.notifyLocked()
	s.mu.Unlock()
	for _, m := range o {
		if err := s.publish(m.topic, m.payload); err != nil {
			return info, err
		}
	}
	return info, nil
}

// DeleteDevice deletes a sub-device from the "console", bumps the list
// version and sends a delete notification when the gateway is connected
// (iotda-protocol §3.5).
func (s *Sim) DeleteDevice(gw, id string) error {
	s.mu.Lock()
	g := s.gateways[gw]
	if g == nil {
		s.mu.Unlock()
		return fmt.Errorf("%w: %q", ErrUnknownGateway, gw)
	}
	info, code, msg := s.removeDeviceLocked(g, id, g.version+1)
	if code != "" {
		s.mu.Unlock()
		if code == CodeDeviceNotFound {
			return fmt.Errorf("%w: %q under %q", ErrUnknownDevice, id, gw)
		}
		return fmt.Errorf("iotdasim: delete device: %s: %s", code, msg)
	}
	g.version++
	var o []out
	if g.conn != nil {
		o = s.mustDownEvent(g, g.id, iotda.ServiceSubDeviceManager, iotda.EventDeleteNotify, "",
			iotda.NotifyParas{Version: g.version, Devices: []iotda.DeviceInfo{info}})
	}
	s.notifyLocked()
	s.mu.Unlock()
	for _, m := range o {
		if err := s.publish(m.topic, m.payload); err != nil {
			return err
		}
	}
	return nil
}

// DeviceGateway returns the gateway that owns sub-device id.
func (s *Sim) DeviceGateway(id string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, g := range s.gateways {
		if _, ok := g.devices[id]; ok {
			return g.id, true
		}
	}
	return "", false
}

// SetShadow sets the shadow returned to shadow get requests for sub ("" or
// gw for the gateway): a JSON array of service entries as in
// iotda-protocol §2.7.
func (s *Sim) SetShadow(gw, sub string, shadow json.RawMessage) error {
	var entries []json.RawMessage
	if err := json.Unmarshal(shadow, &entries); err != nil {
		return fmt.Errorf("iotdasim: shadow must be a JSON array: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	g, object, err := s.targetLocked(gw, sub)
	if err != nil {
		return err
	}
	if object == "" {
		object = gw
	}
	g.shadows[object] = bytes.Clone(shadow)
	return nil
}

// RefuseAdd makes add requests for nodeID fail with code and msg until
// AllowAdd is called.
func (s *Sim) RefuseAdd(nodeID, code, msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refused[nodeID] = iotda.FailedDevice{NodeID: nodeID, ErrorCode: code, ErrorMsg: msg}
}

// AllowAdd undoes RefuseAdd for nodeID.
func (s *Sim) AllowAdd(nodeID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.refused, nodeID)
}

// Disconnect drops gw's connection, as the platform may at any time. It
// returns ErrNotConnected when there is none.
func (s *Sim) Disconnect(gw string) error {
	s.mu.Lock()
	g := s.gateways[gw]
	if g == nil {
		s.mu.Unlock()
		return fmt.Errorf("%w: %q", ErrUnknownGateway, gw)
	}
	c := g.conn
	s.mu.Unlock()
	if c == nil {
		return fmt.Errorf("%w: %q", ErrNotConnected, gw)
	}
	kick(c.cl, fmt.Errorf("iotdasim: disconnected by the platform at %s", s.now().UTC().Format(time.RFC3339)))
	return nil
}
