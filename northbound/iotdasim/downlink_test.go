package iotdasim

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/subgate/subgate/northbound/iotda"
)

// call runs fn in a goroutine owned by the test and returns a channel
// with its result.
func call[T any](t *testing.T, fn func() (T, error)) <-chan result[T] {
	ch := make(chan result[T], 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		v, err := fn()
		ch <- result[T]{v, err}
	}()
	t.Cleanup(func() { <-done })
	return ch
}

type result[T any] struct {
	v   T
	err error
}

func await[T any](t *testing.T, ch <-chan result[T]) (T, error) {
	t.Helper()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-time.After(waitTime):
		t.Fatal("call did not return")
		var zero T
		return zero, nil
	}
}

func TestCommandImplicitQoS0(t *testing.T) {
	s := newSim(t, nil)
	if _, err := s.AddDevice(gw1, iotda.DeviceInfo{NodeID: "n1", ProductID: "p"}); err != nil {
		t.Fatal(err)
	}
	// No explicit subscription: the platform's implicit QoS 0 one delivers
	// the command (iotda-protocol §1.6).
	d := connectDevice(t, s, gw1, secret1)
	res := call(t, func() (iotda.CommandResponse, error) {
		return s.Command(ctxT(t), gw1, "p_n1", "svc", "reboot", json.RawMessage(`{"delay":1}`))
	})
	m := d.recv()
	id, kind, rid, err := iotda.ParseTopic(m.topic)
	if err != nil || id != gw1 || kind != iotda.KindCommand || m.qos != 0 {
		t.Fatalf("command on %s qos %d: %v", m.topic, m.qos, err)
	}
	var cmd iotda.Command
	if err := json.Unmarshal(m.payload, &cmd); err != nil {
		t.Fatal(err)
	}
	if cmd.ObjectDeviceID != "p_n1" || cmd.ServiceID != "svc" || cmd.CommandName != "reboot" || string(cmd.Paras) != `{"delay":1}` {
		t.Fatalf("command %+v", cmd)
	}
	d.publish(iotda.TopicCommandResponse(gw1, rid), 1, iotda.CommandResponse{ResultCode: 0, ResponseName: "ok", Paras: json.RawMessage(`{"r":1}`)})
	rsp, err := await(t, res)
	if err != nil || rsp.ResponseName != "ok" || string(rsp.Paras) != `{"r":1}` {
		t.Fatalf("response %+v %v", rsp, err)
	}

	// With an explicit subscription the command arrives at QoS 1; a
	// command to the gateway itself has no object_device_id.
	for _, f := range iotda.Subscriptions(gw1) {
		d.subscribe(f, 1)
	}
	res = call(t, func() (iotda.CommandResponse, error) {
		return s.Command(ctxT(t), gw1, "", "svc", "ping", nil)
	})
	m = d.recv()
	_, _, rid, _ = iotda.ParseTopic(m.topic)
	if m.qos != 1 || string(m.payload) != `{"service_id":"svc","command_name":"ping","paras":{}}` {
		t.Fatalf("command qos %d %s", m.qos, m.payload)
	}
	d.publish(iotda.TopicCommandResponse(gw1, rid), 1, `{"result_code":1}`)
	if rsp, err = await(t, res); err != nil || rsp.ResultCode != 1 {
		t.Fatalf("response %+v %v", rsp, err)
	}
	if errs := s.Errors(); len(errs) != 0 {
		t.Fatalf("errors %q", errs)
	}
}

func TestCommandErrors(t *testing.T) {
	s := newSim(t, nil)
	ctx := ctxT(t)
	if _, err := s.Command(ctx, gw1, "", "s", "c", nil); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("disconnected gateway: %v", err)
	}
	if _, err := s.Command(ctx, "nobody", "", "s", "c", nil); !errors.Is(err, ErrUnknownGateway) {
		t.Fatalf("unknown gateway: %v", err)
	}
	d := connectDevice(t, s, gw1, secret1)
	if _, err := s.Command(ctx, gw1, "ghost", "s", "c", nil); !errors.Is(err, ErrUnknownDevice) {
		t.Fatalf("unknown device: %v", err)
	}
	if _, err := s.Command(ctx, gw1, "", "s", "c", json.RawMessage(`{`)); err == nil {
		t.Fatal("invalid paras accepted")
	}

	// Answer on the wrong topic: recorded, and the command times out.
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	res := call(t, func() (iotda.CommandResponse, error) { return s.Command(short, gw1, "", "s", "c", nil) })
	m := d.recv()
	_, _, rid, _ := iotda.ParseTopic(m.topic)
	d.publish(iotda.TopicPropertySetResponse(gw1, rid), 1, iotda.PropertySetResponse{})
	waitFor(t, s, "wrong topic error", func(v *View) bool { return hasError(v, "answered on the property_set_response topic") })
	if _, err := await(t, res); !errors.Is(err, ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("timeout: %v", err)
	}
	// A late answer is an error too.
	n0 := len(s.Errors())
	d.publish(iotda.TopicCommandResponse(gw1, rid), 1, iotda.CommandResponse{})
	waitNewError(t, s, n0, "unknown or expired request_id")

	// A malformed answer is recorded and not delivered.
	short2, cancel2 := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel2()
	res = call(t, func() (iotda.CommandResponse, error) { return s.Command(short2, gw1, "", "s", "c", nil) })
	m = d.recv()
	_, _, rid, _ = iotda.ParseTopic(m.topic)
	n := len(s.Errors())
	d.publish(iotda.TopicCommandResponse(gw1, rid), 1, `{"resultcode":0}`)
	waitNewError(t, s, n, "unknown field")
	if _, err := await(t, res); !errors.Is(err, ErrTimeout) {
		t.Fatalf("malformed: %v", err)
	}
}

func TestPropertiesSetGet(t *testing.T) {
	s := newSim(t, nil)
	if _, err := s.AddDevice(gw1, iotda.DeviceInfo{NodeID: "n1", ProductID: "p"}); err != nil {
		t.Fatal(err)
	}
	d := connectDevice(t, s, gw1, secret1)
	set := call(t, func() (iotda.PropertySetResponse, error) {
		return s.SetProperties(ctxT(t), gw1, "p_n1", []iotda.Service{{ServiceID: "s", Properties: json.RawMessage(`{"t":57}`)}})
	})
	m := d.recv()
	_, kind, rid, _ := iotda.ParseTopic(m.topic)
	if kind != iotda.KindPropertySet || string(m.payload) != `{"object_device_id":"p_n1","services":[{"service_id":"s","properties":{"t":57}}]}` {
		t.Fatalf("property set %v %s", kind, m.payload)
	}
	d.publish(iotda.TopicPropertySetResponse(gw1, rid), 1, iotda.PropertySetResponse{ResultCode: 0, ResultDesc: "success"})
	if rsp, err := await(t, set); err != nil || rsp.ResultDesc != "success" {
		t.Fatalf("set %+v %v", rsp, err)
	}

	get := call(t, func() (iotda.PropertyGetResponse, error) { return s.GetProperties(ctxT(t), gw1, "p_n1", "s") })
	m = d.recv()
	_, kind, rid, _ = iotda.ParseTopic(m.topic)
	if kind != iotda.KindPropertyGet || string(m.payload) != `{"object_device_id":"p_n1","service_id":"s"}` {
		t.Fatalf("property get %v %s", kind, m.payload)
	}
	d.publish(iotda.TopicPropertyGetResponse(gw1, rid), 1, iotda.PropertyGetResponse{Services: []iotda.Service{{ServiceID: "s", Properties: json.RawMessage(`{"t":57}`)}}})
	if rsp, err := await(t, get); err != nil || len(rsp.Services) != 1 || string(rsp.Services[0].Properties) != `{"t":57}` {
		t.Fatalf("get %+v %v", rsp, err)
	}
}

func TestShadowTimeSyncMessagesEvents(t *testing.T) {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	s := newSim(t, func(c *Config) { c.Clock = func() time.Time { return now } })
	if _, err := s.AddDevice(gw1, iotda.DeviceInfo{NodeID: "n1", ProductID: "p"}); err != nil {
		t.Fatal(err)
	}
	shadow := `[{"service_id":"a","desired":{"properties":{"x":1}},"version":3},{"service_id":"b","reported":{"properties":{"y":2}}}]`
	if err := s.SetShadow(gw1, "p_n1", json.RawMessage(shadow)); err != nil {
		t.Fatal(err)
	}
	if err := s.SetShadow(gw1, "p_n1", json.RawMessage(`{}`)); err == nil {
		t.Fatal("object shadow accepted")
	}
	d := connectDevice(t, s, gw1, secret1)

	d.publish(iotda.TopicShadowGet(gw1, "sh1"), 1, iotda.ShadowGet{ObjectDeviceID: "p_n1", ServiceID: "b"})
	m := d.recv()
	if m.topic != iotda.TopicShadowResponse(gw1, "sh1") {
		t.Fatalf("shadow topic %s", m.topic)
	}
	var sr iotda.ShadowResponse
	if err := json.Unmarshal(m.payload, &sr); err != nil {
		t.Fatal(err)
	}
	var entries []iotda.ShadowService
	if err := json.Unmarshal(sr.Shadow, &entries); err != nil || sr.ObjectDeviceID != "p_n1" || len(entries) != 1 || entries[0].ServiceID != "b" {
		t.Fatalf("shadow %s: %v", m.payload, err)
	}
	d.publish(iotda.TopicShadowGet(gw1, "sh2"), 1, iotda.ShadowGet{})
	if m = d.recv(); string(m.payload) != `{"object_device_id":"gw1","shadow":[]}` {
		t.Fatalf("gateway shadow %s", m.payload)
	}

	d.event("p_n1", iotda.ServiceTimeSync, iotda.EventTimeSyncRequest, "", iotda.TimeSyncRequestParas{DeviceSendTime: 1000})
	evs, ev := d.recvEvent()
	var ts iotda.TimeSyncResponseParas
	decodeParas(t, ev, &ts)
	if evs.ObjectDeviceID != "p_n1" || ts.DeviceSendTime != 1000 || ts.ServerRecvTime != now.UnixMilli() || ts.ServerSendTime != now.UnixMilli() {
		t.Fatalf("time sync %+v %+v", evs, ts)
	}

	if err := s.SendMessage(gw1, "p_n1", json.RawMessage(`"hi"`)); err != nil {
		t.Fatal(err)
	}
	m = d.recv()
	mm, system := iotda.ParseMessageDown(m.payload)
	if m.topic != iotda.TopicMessagesDown(gw1) || !system || mm.ObjectDeviceID != "p_n1" || string(mm.ContentBytes()) != "hi" || len(mm.ID) != 36 {
		t.Fatalf("message %s", m.payload)
	}
	if err := s.SendMessage(gw1, "p_n1", json.RawMessage(`[1]`)); err == nil {
		t.Fatal("array content accepted")
	}
	if err := s.SendRawMessage(gw1, []byte("raw")); err != nil {
		t.Fatal(err)
	}
	if m = d.recv(); string(m.payload) != "raw" {
		t.Fatalf("raw %s", m.payload)
	}
	if err := s.SendEvent(gw1, "p_n1", iotda.ServiceOTA, iotda.EventVersionQuery, nil); err != nil {
		t.Fatal(err)
	}
	evs, ev = d.recvEvent()
	if evs.ObjectDeviceID != "p_n1" || ev.EventType != iotda.EventVersionQuery || ev.EventTime != "20250101T000000Z" {
		t.Fatalf("event %+v %+v", evs, ev)
	}
	if err := s.SendEvent(gw1, "ghost", iotda.ServiceOTA, iotda.EventVersionQuery, nil); !errors.Is(err, ErrUnknownDevice) {
		t.Fatalf("event to unknown device: %v", err)
	}
	if errs := s.Errors(); len(errs) != 0 {
		t.Fatalf("errors %q", errs)
	}
}
