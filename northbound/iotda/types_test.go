package iotda

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func golden(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return buf.Bytes()
}

// strictUnmarshal refuses unknown fields, so a misspelt tag fails.
func strictUnmarshal(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// TestGoldenPayloads decodes each documented shape into its type and
// encodes it back byte for byte (golden files keep struct field order).
func TestGoldenPayloads(t *testing.T) {
	for _, tc := range []struct {
		file string
		v    any
	}{
		{"batch_properties.json", new(BatchProperties)},
		{"properties_report.json", new(PropertiesReport)},
		{"message_up.json", new(MessageUp)},
		{"message_down.json", new(MessageDown)},
		{"property_set.json", new(PropertySet)},
		{"property_set_response.json", new(PropertySetResponse)},
		{"property_get.json", new(PropertyGet)},
		{"property_get_response.json", new(PropertyGetResponse)},
		{"command.json", new(Command)},
		{"command_response.json", new(CommandResponse)},
		{"shadow_get.json", new(ShadowGet)},
		{"shadow_response.json", new(ShadowResponse)},
	} {
		t.Run(tc.file, func(t *testing.T) {
			want := golden(t, tc.file)
			if err := strictUnmarshal(want, tc.v); err != nil {
				t.Fatal(err)
			}
			got, err := json.Marshal(tc.v)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("round trip\n got %s\nwant %s", got, want)
			}
		})
	}
}

// TestGoldenEvents checks every documented event: the envelope, the
// service and event type constants, strict decoding of paras into its
// type, and a byte-exact re-encoding of both.
func TestGoldenEvents(t *testing.T) {
	for _, tc := range []struct {
		file      string
		serviceID string
		eventType string
		paras     any
	}{
		{"update_status.json", ServiceSubDeviceManager, EventUpdateStatus, new(UpdateStatusParas)},
		{"update_status_response.json", ServiceSubDeviceManager, EventUpdateStatusResponse, new(UpdateStatusResponseParas)},
		{"add_notify.json", ServiceSubDeviceManager, EventAddNotify, new(NotifyParas)},
		{"delete_notify.json", ServiceSubDeviceManager, EventDeleteNotify, new(NotifyParas)},
		{"sync_request.json", ServiceSubDeviceManager, EventSyncRequest, new(SyncParas)},
		{"add_request.json", ServiceSubDeviceManager, EventAddRequest, new(AddRequestParas)},
		{"add_response.json", ServiceSubDeviceManager, EventAddResponse, new(AddResponseParas)},
		{"delete_request.json", ServiceSubDeviceManager, EventDeleteRequest, new(DeleteRequestParas)},
		{"delete_response.json", ServiceSubDeviceManager, EventDeleteResponse, new(DeleteResponseParas)},
		{"version_query.json", ServiceOTA, EventVersionQuery, new(VersionQueryParas)},
		{"version_report.json", ServiceOTA, EventVersionReport, new(VersionReportParas)},
		{"firmware_upgrade.json", ServiceOTA, EventFirmwareUpgrade, new(UpgradeParas)},
		{"upgrade_progress.json", ServiceOTA, EventUpgradeProgress, new(ProgressParas)},
		{"time_sync_request.json", ServiceTimeSync, EventTimeSyncRequest, new(TimeSyncRequestParas)},
		{"time_sync_response.json", ServiceTimeSync, EventTimeSyncResponse, new(TimeSyncResponseParas)},
		{"sdk_info.json", ServiceSDKInfo, EventSDKInfoReport, new(SDKInfoParas)},
		{"log_report.json", ServiceLog, EventLogReport, new(LogReportParas)},
		{"log_config.json", ServiceLog, EventLogConfig, new(LogConfigParas)},
	} {
		t.Run(tc.file, func(t *testing.T) {
			want := golden(t, tc.file)
			evs, err := ParseEvents(want)
			if err != nil {
				t.Fatal(err)
			}
			if err := strictUnmarshal(want, new(Events)); err != nil {
				t.Fatal(err)
			}
			if len(evs.Services) != 1 {
				t.Fatalf("%d services", len(evs.Services))
			}
			ev := evs.Services[0]
			if ev.ServiceID != tc.serviceID || ev.EventType != tc.eventType {
				t.Fatalf("service %q event %q", ev.ServiceID, ev.EventType)
			}
			if err := ev.DecodeParasStrict(tc.paras); err != nil {
				t.Fatal(err)
			}
			gotParas, err := json.Marshal(tc.paras)
			if err != nil {
				t.Fatal(err)
			}
			var wantParas bytes.Buffer
			if err := json.Compact(&wantParas, ev.Paras); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(gotParas, wantParas.Bytes()) {
				t.Fatalf("paras round trip\n got %s\nwant %s", gotParas, wantParas.Bytes())
			}
			got, err := json.Marshal(evs)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("envelope round trip\n got %s\nwant %s", got, want)
			}
		})
	}
}

func TestGoldenValidate(t *testing.T) {
	var bp BatchProperties
	mustDecode(t, golden(t, "batch_properties.json"), &bp)
	if err := bp.Validate(); err != nil {
		t.Errorf("batch: %v", err)
	}
	for file, check := range map[string]func(Event) error{
		"update_status.json": func(e Event) error {
			var p UpdateStatusParas
			return errors.Join(e.DecodeParas(&p), p.Validate())
		},
		"add_request.json": func(e Event) error {
			var p AddRequestParas
			return errors.Join(e.DecodeParas(&p), p.Validate())
		},
		"delete_request.json": func(e Event) error {
			var p DeleteRequestParas
			return errors.Join(e.DecodeParas(&p), p.Validate())
		},
		"firmware_upgrade.json": func(e Event) error {
			var p UpgradeParas
			return errors.Join(e.DecodeParas(&p), p.Validate(e.EventType))
		},
		"log_report.json": func(e Event) error {
			var p LogReportParas
			return errors.Join(e.DecodeParas(&p), p.Validate())
		},
	} {
		evs, err := ParseEvents(golden(t, file))
		if err != nil {
			t.Fatal(err)
		}
		if err := check(evs.Services[0]); err != nil {
			t.Errorf("%s: %v", file, err)
		}
	}
}

func mustDecode(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}

func TestNewEvents(t *testing.T) {
	tm := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	b, err := NewEvents("", ServiceSubDeviceManager, EventSyncRequest, "", tm, SyncParas{Version: 7})
	if err != nil {
		t.Fatal(err)
	}
	if want := golden(t, "sync_request.json"); !bytes.Equal(b, want) {
		t.Fatalf("got %s\nwant %s", b, want)
	}
	b, err = NewEvents("sub1", ServiceOTA, EventVersionReport, "e1", time.Time{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"object_device_id":"sub1","services":[{"service_id":"$ota","event_type":"version_report","event_id":"e1","paras":{}}]}`
	if string(b) != want {
		t.Fatalf("got %s", b)
	}
	// Zero version is left out: "sync all" (iotda-protocol §3.6).
	b, err = NewEvents("", ServiceSubDeviceManager, EventSyncRequest, "", time.Time{}, SyncParas{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"paras":{}`) {
		t.Fatalf("got %s", b)
	}
	if _, err := NewEvents("", "s", "e", "", time.Time{}, func() {}); err == nil {
		t.Fatal("NewEvents accepted an unmarshalable paras")
	}
}

func TestParseEventsErrors(t *testing.T) {
	for _, p := range []string{
		``, `null`, `[]`, `{}`, `{"services":[]}`, `{"services":null}`,
		`{"services":[{"event_type":"x","paras":{}}]}`,
		`{"services":[{"service_id":"x","paras":{}}]}`,
		`{"services":[{"service_id":"x","event_type":"y","paras":[1]}]}`,
		`{"services":[{"service_id":"x","event_type":"y","paras":"s"}]}`,
		`{"services":[{"service_id":1,"event_type":"y"}]}`,
		`{"services":[{"service_id":"x","event_type":"y"}]} trailing`,
	} {
		if _, err := ParseEvents([]byte(p)); !errors.Is(err, ErrBadPayload) {
			t.Errorf("ParseEvents(%q) err = %v", p, err)
		}
	}
	evs, err := ParseEvents([]byte(`{"services":[{"service_id":"$ota","event_type":"version_query"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	var q VersionQueryParas
	if err := evs.Services[0].DecodeParas(&q); err != nil || q.TaskID != "" {
		t.Fatalf("absent paras: %v %+v", err, q)
	}
	bad := Event{ServiceID: "$ota", EventType: "version_report", Paras: json.RawMessage(`{"fw_version":1}`)}
	if err := bad.DecodeParas(new(VersionReportParas)); !errors.Is(err, ErrBadPayload) {
		t.Fatalf("DecodeParas type error = %v", err)
	}
	unknown := Event{ServiceID: "$ota", EventType: "version_report", Paras: json.RawMessage(`{"fwversion":"1"}`)}
	if err := unknown.DecodeParas(new(VersionReportParas)); err != nil {
		t.Fatalf("lenient decode: %v", err)
	}
	if err := unknown.DecodeParasStrict(new(VersionReportParas)); !errors.Is(err, ErrBadPayload) {
		t.Fatalf("strict decode of unknown field = %v", err)
	}
}

func TestParseMessageDown(t *testing.T) {
	for _, tc := range []struct {
		in      string
		system  bool
		object  string
		content string // ContentBytes
	}{
		{`{"object_device_id":"sub1","name":"n","id":"1","content":"hello"}`, true, "sub1", "hello"},
		{`{"object_device_id":"sub1","content":{"a":1}}`, true, "sub1", `{"a":1}`},
		{` {"content":"x"} `, true, "", "x"},
		{`{"object_device_id":null,"name":null,"id":null,"content":null}`, true, "", ""},
		{`{}`, true, "", ""},
		{`{"content":"caf\u00e9 \"q\""}`, true, "", `café "q"`},
		{`{"object_device_id":"sub1","content":"x","extra":1}`, false, "", ""},
		{`{"object_device_id":5,"content":"x"}`, false, "", ""},
		{`{"content":[1,2]}`, false, "", ""},
		{`{"content":5}`, false, "", ""},
		{`{"content":true}`, false, "", ""},
		{`{"content":"x"`, false, "", ""},
		{`["content"]`, false, "", ""},
		{`hello`, false, "", ""},
		{``, false, "", ""},
		{"\xff\xfe", false, "", ""},
	} {
		m, system := ParseMessageDown([]byte(tc.in))
		if system != tc.system {
			t.Errorf("ParseMessageDown(%q) system = %v", tc.in, system)
			continue
		}
		if m.ObjectDeviceID != tc.object || string(m.ContentBytes()) != tc.content {
			t.Errorf("ParseMessageDown(%q) = %+v content %q", tc.in, m, m.ContentBytes())
		}
		if !system && (m.ObjectDeviceID != "" || m.Content != nil) {
			t.Errorf("ParseMessageDown(%q) returned fields for a raw payload", tc.in)
		}
	}
}

func TestValidateErrors(t *testing.T) {
	many := func(n int) []DeviceStatus {
		s := make([]DeviceStatus, n)
		for i := range s {
			s[i] = DeviceStatus{DeviceID: "d" + strings.Repeat("x", i%5), Status: StatusOnline}
		}
		return s
	}
	if err := (UpdateStatusParas{DeviceStatuses: many(MaxStatusesPerMessage)}).Validate(); err != nil {
		t.Errorf("100 statuses: %v", err)
	}
	for name, tc := range map[string]struct {
		err  error
		want error
	}{
		"status empty":    {UpdateStatusParas{}.Validate(), ErrLimit},
		"status 101":      {UpdateStatusParas{DeviceStatuses: many(MaxStatusesPerMessage + 1)}.Validate(), ErrLimit},
		"status inactive": {UpdateStatusParas{DeviceStatuses: []DeviceStatus{{"d1", StatusInactive}}}.Validate(), ErrBadField},
		"status lower":    {UpdateStatusParas{DeviceStatuses: []DeviceStatus{{"d1", "online"}}}.Validate(), ErrBadField},
		"status bad id":   {UpdateStatusParas{DeviceStatuses: []DeviceStatus{{"d 1", StatusOnline}}}.Validate(), ErrBadField},
		"add empty":       {AddRequestParas{}.Validate(), ErrLimit},
		"add 51":          {AddRequestParas{Devices: make([]AddDevice, MaxAddPerRequest+1)}.Validate(), ErrLimit},
		"add no node":     {AddDevice{ProductID: "p"}.Validate(), ErrBadField},
		"add no product":  {AddDevice{NodeID: "n"}.Validate(), ErrBadField},
		"add long pid":    {AddDevice{NodeID: "n", ProductID: strings.Repeat("p", 37)}.Validate(), ErrBadField},
		"add bad id":      {AddDevice{NodeID: "n", ProductID: "p", DeviceID: "a/b"}.Validate(), ErrBadField},
		"add bad parent":  {AddDevice{NodeID: "n", ProductID: "p", ParentDeviceID: "a b"}.Validate(), ErrBadField},
		"add ext string":  {AddDevice{NodeID: "n", ProductID: "p", ExtensionInfo: json.RawMessage(`""`)}.Validate(), ErrBadField},
		"add ext big": {AddDevice{NodeID: "n", ProductID: "p",
			ExtensionInfo: json.RawMessage(`{"a":"` + strings.Repeat("x", MaxExtensionInfoSize) + `"}`)}.Validate(), ErrLimit},
		"delete empty":  {DeleteRequestParas{}.Validate(), ErrLimit},
		"delete 51":     {DeleteRequestParas{Devices: make([]string, MaxDeletePerRequest+1)}.Validate(), ErrLimit},
		"delete bad id": {DeleteRequestParas{Devices: []string{""}}.Validate(), ErrBadField},
		"batch empty":   {BatchProperties{}.Validate(), ErrLimit},
		"batch 101":     {BatchProperties{Devices: make([]DeviceServices, MaxBatchDevices+1)}.Validate(), ErrLimit},
		"batch no svc":  {BatchProperties{Devices: []DeviceServices{{DeviceID: "d"}}}.Validate(), ErrBadField},
		"batch no sid": {BatchProperties{Devices: []DeviceServices{{DeviceID: "d",
			Services: []Service{{Properties: json.RawMessage(`{}`)}}}}}.Validate(), ErrBadField},
		"batch props array": {BatchProperties{Devices: []DeviceServices{{DeviceID: "d",
			Services: []Service{{ServiceID: "s", Properties: json.RawMessage(`[1]`)}}}}}.Validate(), ErrBadField},
		"batch bad time": {BatchProperties{Devices: []DeviceServices{{DeviceID: "d",
			Services: []Service{{ServiceID: "s", EventTime: "yesterday"}}}}}.Validate(), ErrBadField},
		"upgrade no url":   {UpgradeParas{Version: "v"}.Validate(EventFirmwareUpgrade), ErrBadField},
		"upgrade v1 size":  {UpgradeParas{Version: "v", URL: "u", FileName: "f", Sign: strings.Repeat("a", 64)}.Validate(EventSoftwareUpgrade), ErrBadField},
		"upgrade bad sign": {UpgradeParas{Version: "v", URL: "u", Sign: "abc"}.Validate(EventFirmwareUpgradeV2), ErrBadField},
		"upgrade kind":     {UpgradeParas{Version: "v", URL: "u"}.Validate(EventVersionQuery), ErrBadField},
		"log type":         {LogReportParas{Type: "X", Content: "c"}.Validate(), ErrBadField},
		"log content":      {LogReportParas{Type: LogDeviceCommand}.Validate(), ErrBadField},
	} {
		if !errors.Is(tc.err, tc.want) {
			t.Errorf("%s: err = %v, want %v", name, tc.err, tc.want)
		}
	}
	if err := (UpgradeParas{Version: "v", URL: "u"}).Validate(EventFirmwareUpgradeV2); err != nil {
		t.Errorf("v2 minimal: %v", err)
	}
}

func BenchmarkBatchPropertiesMarshal(b *testing.B) {
	bp := BatchProperties{Devices: make([]DeviceServices, MaxBatchDevices)}
	for i := range bp.Devices {
		bp.Devices[i] = DeviceServices{DeviceID: "smoke_node_0001", Services: []Service{{
			ServiceID: "smokeDetector", Properties: json.RawMessage(`{"alarm":1,"temperature":23.5}`), EventTime: "20240101T000000Z"}}}
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := json.Marshal(bp); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseEvents(b *testing.B) {
	p := golden(b, "add_notify.json")
	b.ReportAllocs()
	b.SetBytes(int64(len(p)))
	for b.Loop() {
		evs, err := ParseEvents(p)
		if err != nil {
			b.Fatal(err)
		}
		var n NotifyParas
		if err := evs.Services[0].DecodeParas(&n); err != nil {
			b.Fatal(err)
		}
	}
}
