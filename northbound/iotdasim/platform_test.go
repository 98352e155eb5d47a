package iotdasim

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/subgate/subgate/northbound/iotda"
)

func TestSubDeviceLifecycle(t *testing.T) {
	s := newSim(t, nil)
	s.RefuseAdd("node-refused", "E1", "refused by test")
	d := connectDevice(t, s, gw1, secret1)
	d.subscribe(iotda.TopicEventsDown(gw1), 1)

	// Add: two new devices, one refused, one with a bad extension_info.
	d.event("", iotda.ServiceSubDeviceManager, iotda.EventAddRequest, "ev-add", iotda.AddRequestParas{Devices: []iotda.AddDevice{
		{NodeID: "node_1", ProductID: "smoke", Name: "kitchen", ExtensionInfo: json.RawMessage(`{"floor":1}`)},
		{NodeID: "node2", ProductID: "smoke", DeviceID: "custom-id"},
		{NodeID: "node-refused", ProductID: "smoke"},
		{NodeID: "node3", ProductID: "smoke", ExtensionInfo: json.RawMessage(`"x"`)},
	}})
	evs, ev := d.recvEvent()
	if ev.EventType != iotda.EventAddResponse || ev.EventID != "ev-add" || evs.ObjectDeviceID != gw1 {
		t.Fatalf("add response: %+v %+v", evs, ev)
	}
	var rsp iotda.AddResponseParas
	decodeParas(t, ev, &rsp)
	if len(rsp.SuccessfulDevices) != 2 || rsp.SuccessfulDevices[0].DeviceID != "smoke_node_1" ||
		rsp.SuccessfulDevices[1].DeviceID != "custom-id" || rsp.SuccessfulDevices[0].Status != iotda.StatusInactive ||
		rsp.SuccessfulDevices[0].ParentDeviceID != gw1 {
		t.Fatalf("successful: %+v", rsp.SuccessfulDevices)
	}
	if len(rsp.FailedDevices) != 2 || rsp.FailedDevices[0].ErrorCode != "E1" || rsp.FailedDevices[1].ErrorCode != CodeInvalid {
		t.Fatalf("failed: %+v", rsp.FailedDevices)
	}
	_, ev = d.recvEvent()
	var note iotda.NotifyParas
	decodeParas(t, ev, &note)
	if ev.EventType != iotda.EventAddNotify || note.Version != 1 || len(note.Devices) != 2 || note.Devices[0].NodeID != "node_1" {
		t.Fatalf("add notify: %s %+v", ev.EventType, note)
	}
	if string(note.Devices[0].ExtensionInfo) != `{"floor":1}` {
		t.Fatalf("extension_info: %s", note.Devices[0].ExtensionInfo)
	}
	if !hasErrorNow(s, "extension_info") {
		t.Fatalf("bad extension_info not recorded: %q", s.Errors())
	}

	// Adding an existing node again fails without an error record: a retry
	// after a lost response is legitimate.
	n := len(s.Errors())
	d.event(gw1, iotda.ServiceSubDeviceManager, iotda.EventAddRequest, "", iotda.AddRequestParas{Devices: []iotda.AddDevice{{NodeID: "node_1", ProductID: "smoke"}}})
	_, ev = d.recvEvent()
	var rsp2 iotda.AddResponseParas
	decodeParas(t, ev, &rsp2)
	if len(rsp2.SuccessfulDevices) != 0 || len(rsp2.FailedDevices) != 1 || rsp2.FailedDevices[0].ErrorCode != CodeDeviceExists {
		t.Fatalf("duplicate add: %+v", rsp2)
	}
	if len(ev.EventID) != 36 {
		t.Fatalf("generated event_id %q", ev.EventID)
	}
	if len(s.Errors()) != n {
		t.Fatalf("duplicate add recorded errors: %q", s.Errors()[n:])
	}

	// Status: one known ONLINE, one unknown.
	d.event("", iotda.ServiceSubDeviceManager, iotda.EventUpdateStatus, "ev-st", iotda.UpdateStatusParas{DeviceStatuses: []iotda.DeviceStatus{
		{DeviceID: "smoke_node_1", Status: iotda.StatusOnline}, {DeviceID: "ghost", Status: iotda.StatusOffline},
	}})
	_, ev = d.recvEvent()
	var st iotda.UpdateStatusResponseParas
	decodeParas(t, ev, &st)
	if ev.EventType != iotda.EventUpdateStatusResponse || ev.EventID != "ev-st" || len(st.SuccessfulDevices) != 1 ||
		len(st.FailedDevices) != 1 || st.FailedDevices[0].DeviceID != "ghost" {
		t.Fatalf("status response %s %+v", ev.EventID, st)
	}
	if got := s.Status(gw1, "smoke_node_1"); got != iotda.StatusOnline {
		t.Fatalf("status %q", got)
	}
	if got := s.Status(gw1, "custom-id"); got != iotda.StatusInactive {
		t.Fatalf("status %q", got)
	}
	ups := s.StatusUpdates()
	if len(ups) != 1 || ups[0].Entries() != 2 {
		t.Fatalf("status updates %+v", ups)
	}

	// Delete: one known, one unknown.
	d.event("", iotda.ServiceSubDeviceManager, iotda.EventDeleteRequest, "ev-del", iotda.DeleteRequestParas{Devices: []string{"custom-id", "ghost"}})
	_, ev = d.recvEvent()
	var del iotda.DeleteResponseParas
	decodeParas(t, ev, &del)
	if ev.EventID != "ev-del" || len(del.SuccessfulDevices) != 1 || del.SuccessfulDevices[0] != "custom-id" || len(del.FailedDevices) != 1 {
		t.Fatalf("delete response %+v", del)
	}
	_, ev = d.recvEvent()
	decodeParas(t, ev, &note)
	if ev.EventType != iotda.EventDeleteNotify || note.Version != 2 || len(note.Devices) != 1 || note.Devices[0].DeviceID != "custom-id" || note.Devices[0].NodeID != "node2" {
		t.Fatalf("delete notify %+v", note)
	}
	if devs := s.Devices(gw1); len(devs) != 1 || devs[0].DeviceID != "smoke_node_1" || devs[0].Status != iotda.StatusOnline {
		t.Fatalf("devices %+v", devs)
	}
	if s.Version(gw1) != 2 {
		t.Fatalf("version %d", s.Version(gw1))
	}

	// Sync from version 1 replays the deletion; from 0 the current list.
	d.event("", iotda.ServiceSubDeviceManager, iotda.EventSyncRequest, "", iotda.SyncParas{Version: 1})
	_, ev = d.recvEvent()
	decodeParas(t, ev, &note)
	if ev.EventType != iotda.EventDeleteNotify || note.Version != 2 || note.Devices[0].DeviceID != "custom-id" {
		t.Fatalf("sync from 1: %s %+v", ev.EventType, note)
	}
	d.event("", iotda.ServiceSubDeviceManager, iotda.EventSyncRequest, "", nil)
	_, ev = d.recvEvent()
	decodeParas(t, ev, &note)
	if ev.EventType != iotda.EventAddNotify || note.Version != 2 || len(note.Devices) != 1 || note.Devices[0].Status != iotda.StatusOnline {
		t.Fatalf("sync from 0: %s %+v", ev.EventType, note)
	}
	// Sync at the current version sends nothing: the next event is the
	// answer to a time sync request.
	d.event("", iotda.ServiceSubDeviceManager, iotda.EventSyncRequest, "", iotda.SyncParas{Version: 2})
	d.event("", iotda.ServiceTimeSync, iotda.EventTimeSyncRequest, "", iotda.TimeSyncRequestParas{DeviceSendTime: 1})
	if _, ev = d.recvEvent(); ev.EventType != iotda.EventTimeSyncResponse {
		t.Fatalf("got %s after an up-to-date sync", ev.EventType)
	}
}

func hasErrorNow(s *Sim, sub string) bool {
	var ok bool
	s.View(func(v *View) { ok = hasError(v, sub) })
	return ok
}

func TestConsoleChangesAndSyncChunks(t *testing.T) {
	s := newSim(t, nil)
	// 60 devices added from the console while the gateway is away, then 5
	// deleted, then 2 more added.
	for i := range 60 {
		if _, err := s.AddDevice(gw1, iotda.DeviceInfo{NodeID: fmt.Sprintf("n%02d", i), ProductID: "p"}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 5 {
		if err := s.DeleteDevice(gw1, fmt.Sprintf("p_n%02d", i)); err != nil {
			t.Fatal(err)
		}
	}
	for i := 60; i < 62; i++ {
		if _, err := s.AddDevice(gw1, iotda.DeviceInfo{NodeID: fmt.Sprintf("n%02d", i), ProductID: "p"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.AddDevice(gw1, iotda.DeviceInfo{NodeID: "n10", ProductID: "p"}); err == nil {
		t.Fatal("duplicate console add accepted")
	}
	if err := s.DeleteDevice(gw1, "p_n00"); err == nil {
		t.Fatal("delete of a deleted device accepted")
	}
	if s.Version(gw1) != 67 {
		t.Fatalf("version %d", s.Version(gw1))
	}
	d := connectDevice(t, s, gw1, secret1)
	d.subscribe(iotda.TopicEventsDown(gw1), 1)

	// Full list: 57 devices in chunks of at most 50, versions increasing,
	// the last at the current version.
	d.event(gw1, iotda.ServiceSubDeviceManager, iotda.EventSyncRequest, "", iotda.SyncParas{})
	var got []string
	var last int64
	for len(got) < 57 {
		_, ev := d.recvEvent()
		var note iotda.NotifyParas
		decodeParas(t, ev, &note)
		if ev.EventType != iotda.EventAddNotify || len(note.Devices) > 50 || note.Version <= last {
			t.Fatalf("chunk %s v%d with %d devices after v%d", ev.EventType, note.Version, len(note.Devices), last)
		}
		last = note.Version
		for _, dv := range note.Devices {
			got = append(got, dv.DeviceID)
		}
	}
	if last != 67 || len(got) != 57 || got[0] != "p_n05" || got[56] != "p_n61" {
		t.Fatalf("full list: last v%d, %d devices %v", last, len(got), got)
	}

	// From version 58: adds 59-60, deletes 61-65, adds 66-67.
	d.event(gw1, iotda.ServiceSubDeviceManager, iotda.EventSyncRequest, "", iotda.SyncParas{Version: 58})
	want := []string{"add v60 p_n58,p_n59", "delete v65 p_n00,p_n01,p_n02,p_n03,p_n04", "add v67 p_n60,p_n61"}
	for _, w := range want {
		_, ev := d.recvEvent()
		var note iotda.NotifyParas
		decodeParas(t, ev, &note)
		var ids []string
		for _, dv := range note.Devices {
			ids = append(ids, dv.DeviceID)
		}
		kind := "add"
		if ev.EventType == iotda.EventDeleteNotify {
			kind = "delete"
		}
		if g := fmt.Sprintf("%s v%d %s", kind, note.Version, strings.Join(ids, ",")); g != w {
			t.Fatalf("got %q, want %q", g, w)
		}
	}

	// A console change while connected is notified at once.
	if _, err := s.AddDevice(gw1, iotda.DeviceInfo{NodeID: "live", ProductID: "p", Name: "n"}); err != nil {
		t.Fatal(err)
	}
	_, ev := d.recvEvent()
	var note iotda.NotifyParas
	decodeParas(t, ev, &note)
	if note.Version != 68 || note.Devices[0].DeviceID != "p_live" {
		t.Fatalf("live notify %+v", note)
	}
	if errs := s.Errors(); len(errs) != 0 {
		t.Fatalf("errors: %q", errs)
	}
}

func TestPackChanges(t *testing.T) {
	var cs []change
	add := func(v int64, add bool, n int) {
		for i := range n {
			cs = append(cs, change{version: v, add: add, dev: iotda.DeviceInfo{DeviceID: fmt.Sprintf("d%d_%d", v, i)}})
		}
	}
	add(1, true, 30)
	add(2, true, 30) // does not fit with v1: new chunk
	add(3, true, 10)
	add(4, false, 2)
	add(5, false, 50)
	notes := packChanges(cs)
	var got []string
	for _, n := range notes {
		got = append(got, fmt.Sprintf("%v/%d/%d", n.add, n.version, len(n.devices)))
	}
	want := "true/1/30 true/3/40 false/4/2 false/5/50"
	if strings.Join(got, " ") != want {
		t.Fatalf("packChanges = %v, want %s", got, want)
	}
}

func TestUpstreamValidation(t *testing.T) {
	s := newSim(t, nil)
	if _, err := s.AddDevice(gw1, iotda.DeviceInfo{NodeID: "n1", ProductID: "p"}); err != nil {
		t.Fatal(err)
	}
	d := connectDevice(t, s, gw1, secret1)
	statuses := make([]iotda.DeviceStatus, 101)
	for i := range statuses {
		statuses[i] = iotda.DeviceStatus{DeviceID: "p_n1", Status: iotda.StatusOnline}
	}
	for _, tc := range []struct {
		name  string
		topic string
		body  any
		err   string
	}{
		{"service id without $", iotda.TopicEventsUp(gw1),
			`{"services":[{"service_id":"sub_device_manager","event_type":"sub_device_sync_request","paras":{}}]}`, "unknown service_id"},
		{"101 statuses", iotda.TopicEventsUp(gw1), mustEvents(t, "", iotda.ServiceSubDeviceManager, iotda.EventUpdateStatus,
			iotda.UpdateStatusParas{DeviceStatuses: statuses}), "101 device_statuses"},
		{"status lower case", iotda.TopicEventsUp(gw1), mustEvents(t, "", iotda.ServiceSubDeviceManager, iotda.EventUpdateStatus,
			iotda.UpdateStatusParas{DeviceStatuses: []iotda.DeviceStatus{{DeviceID: "p_n1", Status: "online"}}}), "not ONLINE or OFFLINE"},
		{"misspelt paras key", iotda.TopicEventsUp(gw1),
			`{"services":[{"service_id":"$sub_device_manager","event_type":"sub_device_update_status","paras":{"device_status":[]}}]}`, "unknown field"},
		{"misspelt envelope key", iotda.TopicEventsUp(gw1),
			`{"service":[{"service_id":"$ota","event_type":"version_report","paras":{}}]}`, "unknown field"},
		{"downstream event type up", iotda.TopicEventsUp(gw1), mustEvents(t, "", iotda.ServiceSubDeviceManager, iotda.EventAddNotify,
			iotda.NotifyParas{}), "not an upstream event"},
		{"bad event_time", iotda.TopicEventsUp(gw1),
			`{"services":[{"service_id":"$sdk_info","event_type":"sdk_info_report","event_time":"2024-01-01 00:00:00","paras":{}}]}`, "event_time"},
		{"time sync as string", iotda.TopicEventsUp(gw1),
			`{"services":[{"service_id":"$time_sync","event_type":"time_sync_request","paras":{"device_send_time":"1582685678789"}}]}`, "time_sync_request"},
		{"ota unknown device", iotda.TopicEventsUp(gw1), mustEvents(t, "ghost", iotda.ServiceOTA, iotda.EventVersionReport,
			iotda.VersionReportParas{FwVersion: "1"}), "unknown object_device_id"},
		{"progress without version", iotda.TopicEventsUp(gw1), mustEvents(t, "p_n1", iotda.ServiceOTA, iotda.EventUpgradeProgress,
			map[string]int{"result_code": 0}), "version is required"},
		{"log bad type", iotda.TopicEventsUp(gw1), mustEvents(t, "", iotda.ServiceLog, iotda.EventLogReport,
			iotda.LogReportParas{Type: "X", Content: "c"}), "log type"},
		{"manager for another device", iotda.TopicEventsUp(gw1), mustEvents(t, "p_n1", iotda.ServiceSubDeviceManager, iotda.EventSyncRequest,
			nil), "want none or the gateway"},
		{"batch unknown device", iotda.TopicBatchProperties(gw1), iotda.BatchProperties{Devices: []iotda.DeviceServices{
			{DeviceID: "ghost", Services: []iotda.Service{{ServiceID: "s", Properties: json.RawMessage(`{"a":1}`)}}}}}, "unknown sub-device"},
		{"batch empty service id", iotda.TopicBatchProperties(gw1), iotda.BatchProperties{Devices: []iotda.DeviceServices{
			{DeviceID: "p_n1", Services: []iotda.Service{{Properties: json.RawMessage(`{"a":1}`)}}}}}, "empty service_id"},
		{"batch object_device_id key", iotda.TopicBatchProperties(gw1),
			`{"devices":[{"object_device_id":"p_n1","services":[{"service_id":"s","properties":{}}]}]}`, "unknown field"},
		{"message for unknown device", iotda.TopicMessagesUp(gw1), iotda.MessageUp{ObjectDeviceID: "ghost", Content: json.RawMessage(`"x"`)}, "unknown object_device_id"},
		{"downstream topic", iotda.TopicCommand(gw1, "r1"), `{}`, "downstream topic"},
		{"unknown sys topic", "$oc/devices/" + gw1 + "/sys/foo", `{}`, "unknown system topic"},
		{"response without request", iotda.TopicCommandResponse(gw1, "nope"), iotda.CommandResponse{}, "unknown or expired request_id"},
		{"not utf-8", iotda.TopicEventsUp(gw1), []byte{0xff, 0xfe}, "not UTF-8"},
		{"not json", iotda.TopicPropertiesReport(gw1), `services`, "properties report"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := len(s.Errors())
			d.publish(tc.topic, 1, tc.body)
			waitNewError(t, s, n, tc.err)
		})
	}
	if !d.c.IsConnectionOpen() {
		t.Fatal("payload errors disconnected the gateway")
	}
}

func mustEvents(t *testing.T, object, service, eventType string, paras any) []byte {
	t.Helper()
	b, err := iotda.NewEvents(object, service, eventType, "", time.Time{}, paras)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRecordedUplink(t *testing.T) {
	s := newSim(t, nil)
	if _, err := s.AddDevice(gw1, iotda.DeviceInfo{NodeID: "n1", ProductID: "p"}); err != nil {
		t.Fatal(err)
	}
	d := connectDevice(t, s, gw1, secret1)
	d.publish(iotda.TopicMessagesUp(gw1), 1, iotda.MessageUp{ObjectDeviceID: "p_n1", Name: "n", ID: "m1", Content: json.RawMessage(`"hello"`)})
	d.publish(iotda.TopicMessagesUp(gw1)+"?request_id=r9", 0, `raw bytes`)
	d.publish("policy/topic", 1, `policy payload`)
	d.publish("$oc/devices/"+gw1+"/user/custom", 1, `custom payload`)
	for i := range 3 {
		d.publish(iotda.TopicBatchProperties(gw1), 1, iotda.BatchProperties{Devices: []iotda.DeviceServices{{DeviceID: "p_n1",
			Services: []iotda.Service{{ServiceID: "s", Properties: json.RawMessage(fmt.Sprintf(`{"seq":%d}`, i)), EventTime: "20240101T000000Z"}}}}})
	}
	d.publish(iotda.TopicPropertiesReport(gw1), 1, iotda.PropertiesReport{Services: []iotda.Service{{ServiceID: "gw", Properties: json.RawMessage(`{"up":1}`)}}})
	d.event("p_n1", iotda.ServiceOTA, iotda.EventVersionReport, "", iotda.VersionReportParas{FwVersion: "v1"})
	d.event("p_n1", iotda.ServiceOTA, iotda.EventUpgradeProgress, "", iotda.ProgressParas{ResultCode: 0, Progress: 100, Version: "v2"})
	d.event("", iotda.ServiceSDKInfo, iotda.EventSDKInfoReport, "", iotda.SDKInfoParas{DeviceSDKVersion: "Go_v1"})
	d.event("", iotda.ServiceLog, iotda.EventLogReport, "", iotda.LogReportParas{Type: iotda.LogDeviceStatus, Content: "up"})
	waitFor(t, s, "uplink", func(v *View) bool { return len(v.Events()) == 4 && v.PropertyCount(gw1) == 1 })

	msgs := s.Messages()
	if len(msgs) != 4 {
		t.Fatalf("messages %+v", msgs)
	}
	if m := msgs[0]; !m.System || m.DeviceID != "p_n1" || string(m.Content) != "hello" || m.ID != "m1" {
		t.Fatalf("system message %+v", m)
	}
	if m := msgs[1]; m.System || m.DeviceID != gw1 || string(m.Content) != "raw bytes" || m.RequestID != "r9" {
		t.Fatalf("raw message %+v", m)
	}
	if m := msgs[2]; m.Topic != "policy/topic" || string(m.Content) != "policy payload" {
		t.Fatalf("policy message %+v", m)
	}
	if m := msgs[3]; !strings.HasSuffix(m.Topic, "/user/custom") {
		t.Fatalf("custom message %+v", m)
	}
	props := s.Properties("p_n1")
	if len(props) != 3 || !props[0].Batch {
		t.Fatalf("properties %+v", props)
	}
	for i, p := range props {
		if string(p.Services[0].Properties) != fmt.Sprintf(`{"seq":%d}`, i) {
			t.Fatalf("property order: %d = %s", i, p.Services[0].Properties)
		}
	}
	if pubs := s.Publishes(gw1); len(pubs) != 12 || pubs[0].Kind != iotda.KindMessageUp || pubs[4].Kind != iotda.KindBatchProperties {
		t.Fatalf("publishes %+v", pubs)
	}
	var types []string
	for _, e := range s.Events() {
		types = append(types, e.Event.EventType)
	}
	if strings.Join(types, ",") != "version_report,upgrade_progress_report,sdk_info_report,log_report" {
		t.Fatalf("events %v", types)
	}
	if errs := s.Errors(); len(errs) != 0 {
		t.Fatalf("errors %q", errs)
	}
}

func TestBoundedRecords(t *testing.T) {
	s := newSim(t, func(c *Config) { c.MaxRecords = 3 })
	d := connectDevice(t, s, gw1, secret1)
	for i := range 5 {
		d.publish(iotda.TopicMessagesUp(gw1), 1, fmt.Sprintf("m%d", i))
	}
	waitFor(t, s, "5 messages", func(v *View) bool { return v.MessageCount(gw1) == 5 })
	msgs := s.Messages()
	if len(msgs) != 3 || string(msgs[0].Content) != "m2" || string(msgs[2].Content) != "m4" {
		t.Fatalf("messages %+v", msgs)
	}
	if got := s.Dropped()["messages"]; got != 2 {
		t.Fatalf("dropped %d", got)
	}
}

func TestRateViolations(t *testing.T) {
	// A frozen clock puts every publish in the same second.
	frozen := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	s := newSim(t, func(c *Config) {
		c.MaxMsgsPerSec = 5
		c.Clock = func() time.Time { return frozen }
	})
	d := connectDevice(t, s, gw1, secret1)
	for i := range 8 {
		d.publish(iotda.TopicMessagesUp(gw1), 1, fmt.Sprintf("m%d", i))
	}
	waitFor(t, s, "8 messages", func(v *View) bool { return v.MessageCount(gw1) == 8 })
	if v := s.Violations(); v != 3 {
		t.Fatalf("violations %d, want 3", v)
	}

	// A clock that moves 250 ms per reading: 4 publishes per second.
	var tick time.Time
	s2 := newSim(t, func(c *Config) {
		c.MaxMsgsPerSec = 5
		c.Clock = func() time.Time { tick = tick.Add(250 * time.Millisecond); return tick }
	})
	d2 := connectDevice(t, s2, gw1, secret1)
	for i := range 12 {
		d2.publish(iotda.TopicMessagesUp(gw1), 1, fmt.Sprintf("m%d", i))
	}
	waitFor(t, s2, "12 messages", func(v *View) bool { return v.MessageCount(gw1) == 12 })
	if v := s2.Violations(); v != 0 {
		t.Fatalf("violations %d, want 0", v)
	}
}

func TestRefusedPublishes(t *testing.T) {
	s := newSim(t, nil)
	for _, tc := range []struct {
		name string
		do   func(d *device)
		err  string
	}{
		{"qos 2", func(d *device) { d.c.Publish(iotda.TopicMessagesUp(gw1), 2, false, "x") }, "qos 2"},
		{"retain", func(d *device) { d.c.Publish(iotda.TopicMessagesUp(gw1), 1, true, "x") }, "retain true"},
		{"over 1 MB", func(d *device) {
			d.c.Publish(iotda.TopicMessagesUp(gw1), 1, false, make([]byte, iotda.MaxPublishSize+1))
		}, "1048577 bytes"},
		{"foreign topic qos 0", func(d *device) { d.c.Publish(iotda.TopicMessagesUp(gw2), 0, false, "x") }, "foreign topic"},
		{"foreign topic", func(d *device) { d.c.Publish(iotda.TopicMessagesUp(gw2), 1, false, "x") }, "foreign topic"},
		{"$SYS", func(d *device) { d.c.Publish("$SYS/x", 1, false, "x") }, "foreign topic"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := connectDevice(t, s, gw1, secret1)
			tc.do(d)
			d.waitLost()
			waitFor(t, s, tc.err, func(v *View) bool { return hasError(v, tc.err) && !v.Connected(gw1) })
		})
	}
	// Refused subscriptions get 0x80 and keep the connection.
	d := connectDevice(t, s, gw1, secret1)
	tok := d.c.SubscribeMultiple(map[string]byte{
		"$oc/devices/" + gw2 + "/sys/commands/#": 1,
		"$oc/devices/+/sys/commands/#":           1,
		iotda.TopicMessagesDown(gw1):             2,
		iotda.TopicEventsDown(gw1):               1,
	}, nil)
	if !tok.WaitTimeout(waitTime) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	res := tok.(interface{ Result() map[string]byte }).Result()
	if res["$oc/devices/"+gw2+"/sys/commands/#"] != 0x80 || res["$oc/devices/+/sys/commands/#"] != 0x80 ||
		res[iotda.TopicMessagesDown(gw1)] != 0x80 || res[iotda.TopicEventsDown(gw1)] != 1 {
		t.Fatalf("suback %v", res)
	}
	waitFor(t, s, "subscription recorded", func(v *View) bool {
		subs := v.Subscriptions(gw1)
		return len(subs) == 1 && subs[iotda.TopicEventsDown(gw1)] == 1 && hasError(v, "QoS 2")
	})
	if !d.c.IsConnectionOpen() {
		t.Fatal("disconnected")
	}
}

func TestSubscriptionLimit(t *testing.T) {
	s := newSim(t, nil)
	d := connectDevice(t, s, gw1, secret1)
	filters := map[string]byte{}
	for i := range iotda.MaxSubscriptions + 1 {
		filters[fmt.Sprintf("policy/%d", i)] = 1
	}
	tok := d.c.SubscribeMultiple(filters, nil)
	if !tok.WaitTimeout(waitTime) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	refused := 0
	for _, code := range tok.(interface{ Result() map[string]byte }).Result() {
		if code == 0x80 {
			refused++
		}
	}
	if refused != 1 {
		t.Fatalf("%d refused, want 1", refused)
	}
	waitFor(t, s, "limit error", func(v *View) bool { return hasError(v, "over 50 subscriptions") })
}
