package iotdasim

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/subgate/subgate/northbound/iotda"
)

// snapshot is the part of the platform state and recordings that Stop
// must keep.
type snapshot struct {
	devices    []iotda.DeviceInfo
	version    int64
	connects   int
	messages   int
	properties int
	events     int
	statuses   int
	publishes  int
	errors     []string
	violations int64
	conns      int
}

func takeSnapshot(s *Sim) snapshot {
	var sn snapshot
	s.View(func(v *View) {
		sn = snapshot{
			devices: v.Devices(gw1), version: v.Version(gw1), connects: v.Connects(gw1),
			messages: v.MessageCount(gw1), properties: v.PropertyCount(gw1), events: len(v.Events()), statuses: len(v.StatusUpdates()),
			publishes: len(v.Publishes(gw1)), errors: v.Errors(), violations: v.Violations(),
			conns: len(v.ConnEvents()),
		}
	})
	return sn
}

func TestStopStartKeepsState(t *testing.T) {
	frozen := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	s := newSim(t, func(c *Config) {
		c.HTTPListen = "127.0.0.1:0"
		// With a frozen clock every publish after the first is over the cap.
		c.MaxMsgsPerSec = 1
		c.Clock = func() time.Time { return frozen }
	})
	addr, httpAddr := s.Addr(), s.HTTPAddr()
	d, err := dial(t, addr, gw1, secret1, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, s, "connected", func(v *View) bool { return v.Connected(gw1) })

	// Platform state and recordings: a sub-device, its status, a message,
	// a protocol error, rate violations.
	d.subscribe(iotda.TopicEventsDown(gw1), 1)
	d.event("", iotda.ServiceSubDeviceManager, iotda.EventAddRequest, "ev-add",
		iotda.AddRequestParas{Devices: []iotda.AddDevice{{NodeID: "n1", ProductID: "p"}}})
	for _, want := range []string{iotda.EventAddResponse, iotda.EventAddNotify} {
		if _, ev := d.recvEvent(); ev.EventType != want {
			t.Fatalf("got %s, want %s", ev.EventType, want)
		}
	}
	d.event("", iotda.ServiceSubDeviceManager, iotda.EventUpdateStatus, "ev-st",
		iotda.UpdateStatusParas{DeviceStatuses: []iotda.DeviceStatus{{DeviceID: "p_n1", Status: iotda.StatusOnline}}})
	if _, ev := d.recvEvent(); ev.EventType != iotda.EventUpdateStatusResponse {
		t.Fatalf("got %s, want the status response", ev.EventType)
	}
	d.publish(iotda.TopicMessagesUp(gw1), 1, "before")
	d.publish(iotda.TopicPrefix+gw1+"/sys/bogus", 1, "{}")
	waitFor(t, s, "message and error", func(v *View) bool {
		return v.MessageCount(gw1) == 1 && hasError(v, "unknown system topic")
	})
	before := takeSnapshot(s)
	if before.violations == 0 || before.version != 1 || len(before.devices) != 1 || before.devices[0].Status != iotda.StatusOnline {
		t.Fatalf("before Stop: %+v", before)
	}

	ctx := ctxT(t)
	pending := call(t, func() (iotda.CommandResponse, error) { return s.Command(ctx, gw1, "p_n1", "svc", "cmd", nil) })
	if m := d.recv(); !strings.HasPrefix(m.topic, iotda.TopicPrefix+gw1+"/sys/commands/") {
		t.Fatalf("got %s, want the command", m.topic)
	}
	lost := call(t, func() (bool, error) {
		return true, s.WaitFor(ctx, func(v *View) bool { return !v.Connected(gw1) })
	})
	back := call(t, func() (bool, error) {
		return true, s.WaitFor(ctx, func(v *View) bool { return v.Connects(gw1) == 2 })
	})
	// Acknowledged just before Stop: processed and recorded all the same.
	d.publish(iotda.TopicPropertiesReport(gw1), 1,
		iotda.PropertiesReport{Services: []iotda.Service{{ServiceID: "gw", Properties: json.RawMessage(`{"up":1}`)}}})

	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := await(t, pending); !errors.Is(err, ErrStopped) {
		t.Fatalf("pending command: %v", err)
	}
	if _, err := await(t, lost); err != nil {
		t.Fatalf("WaitFor disconnect: %v", err)
	}
	d.waitLost()
	after := takeSnapshot(s)
	if s.Connected(gw1) {
		t.Fatal("connected after Stop")
	}
	if after.version != before.version || len(after.devices) != 1 || !reflect.DeepEqual(after.devices, before.devices) ||
		after.messages != before.messages || after.properties != before.properties+1 || after.statuses != before.statuses || after.events != before.events ||
		after.publishes != before.publishes+1 || len(after.errors) != len(before.errors) ||
		after.violations != before.violations+1 || after.conns != before.conns+1 {
		t.Fatalf("state not kept:\nbefore %+v\nafter  %+v", before, after)
	}
	if s.Addr() != addr || s.HTTPAddr() != httpAddr {
		t.Fatalf("addresses while stopped: %s %s", s.Addr(), s.HTTPAddr())
	}

	// While stopped: downstream calls fail, console calls work.
	if err := s.SendEvent(gw1, "", "$ota", "version_query", nil); !errors.Is(err, ErrStopped) {
		t.Fatalf("SendEvent while stopped: %v", err)
	}
	if _, err := s.Command(ctx, gw1, "", "svc", "cmd", nil); !errors.Is(err, ErrStopped) {
		t.Fatalf("Command while stopped: %v", err)
	}
	if err := s.Disconnect(gw1); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("Disconnect while stopped: %v", err)
	}
	if _, err := s.AddDevice(gw1, iotda.DeviceInfo{NodeID: "n2", ProductID: "p"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}

	// Start again: same addresses; a client connects there again. (A new
	// client rather than paho's auto-reconnect, whose resume path races
	// inside paho v1.5.1; the gateway does not use it either.)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	if s.Addr() != addr || s.HTTPAddr() != httpAddr {
		t.Fatalf("addresses after Start: %s %s, want %s %s", s.Addr(), s.HTTPAddr(), addr, httpAddr)
	}
	if d, err = dial(t, addr, gw1, secret1, nil); err != nil {
		t.Fatal(err)
	}
	d.subscribe(iotda.TopicEventsDown(gw1), 1)
	if _, err := await(t, back); err != nil {
		t.Fatalf("WaitFor reconnect: %v", err)
	}
	waitFor(t, s, "reconnected", func(v *View) bool { return v.Connected(gw1) })

	// A full sync replays the kept list through the fresh broker.
	d.event("", iotda.ServiceSubDeviceManager, iotda.EventSyncRequest, "", nil)
	_, ev := d.recvEvent()
	var note iotda.NotifyParas
	decodeParas(t, ev, &note)
	if ev.EventType != iotda.EventAddNotify || note.Version != 2 || len(note.Devices) != 2 ||
		note.Devices[0].DeviceID != "p_n1" || note.Devices[1].DeviceID != "p_n2" {
		t.Fatalf("sync after restart: %s %+v", ev.EventType, note)
	}
	d.publish(iotda.TopicMessagesUp(gw1), 1, "after")
	waitFor(t, s, "second message", func(v *View) bool { return v.MessageCount(gw1) == 2 })
	if m := s.Messages(); len(m) != 2 || string(m[0].Content) != "before" || string(m[1].Content) != "after" {
		t.Fatalf("messages: %+v", m)
	}
	code, out := httpDo(t, http.MethodGet, "http://"+httpAddr+"/api/devices?gateway="+gw1, "")
	if code != http.StatusOK || out["version"] != float64(2) || out["connected"] != true {
		t.Fatalf("HTTP after restart: %d %v", code, out)
	}
}

func TestStopLeavesNoGoroutines(t *testing.T) {
	base := runtime.NumGoroutine()
	s, err := New(Config{Listen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", Devices: map[string]string{gw1: secret1}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(); err != nil {
		t.Fatalf("Stop before Start: %v", err)
	}
	var addr string
	for run := range 2 {
		if err := s.Start(); err != nil {
			t.Fatalf("run %d: %v", run, err)
		}
		if run == 0 {
			addr = s.Addr()
		} else if s.Addr() != addr {
			t.Fatalf("run %d: addr %s, want %s", run, s.Addr(), addr)
		}
		d, err := dial(t, s.Addr(), gw1, secret1, nil)
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, s, "connected", func(v *View) bool { return v.Connected(gw1) })
		res := call(t, func() (iotda.CommandResponse, error) { return s.Command(ctxT(t), gw1, "", "s", "c", nil) })
		d.recv()
		if err := s.Stop(); err != nil {
			t.Fatal(err)
		}
		if _, err := await(t, res); !errors.Is(err, ErrStopped) {
			t.Fatalf("run %d: pending command: %v", run, err)
		}
		d.waitLost()
		checkGoroutines(t, base)
	}
	if v := s.Version(gw1); v != 0 || len(s.Errors()) != 0 {
		t.Fatalf("version %d, errors %q", v, s.Errors())
	}

	// An address taken while stopped makes Start fail; it can be retried.
	squat, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err == nil {
		t.Fatal("Start on a taken address succeeded")
	}
	if err := s.SendEvent(gw1, "", "$ota", "version_query", nil); !errors.Is(err, ErrStopped) {
		t.Fatalf("after failed Start: %v", err)
	}
	if err := squat.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatalf("retried Start: %v", err)
	}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}

	if err := s.Close(); err != nil {
		t.Fatalf("Close after Stop: %v", err)
	}
	if err := s.Start(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Start after Close: %v", err)
	}
	if err := s.Stop(); err != nil {
		t.Fatalf("Stop after Close: %v", err)
	}
	if err := s.WaitFor(ctxT(t), func(*View) bool { return false }); !errors.Is(err, ErrClosed) {
		t.Fatalf("WaitFor after Close: %v", err)
	}
	checkGoroutines(t, base)
}
