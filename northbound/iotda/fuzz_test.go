package iotda

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func FuzzParseTopic(f *testing.F) {
	for _, s := range []string{
		TopicMessagesUp("gw1"), TopicCommand("gw1", "r1"), TopicCommandResponse("gw_1", "r-2"),
		TopicPropertySetResponse("gw1", "x"), TopicShadowResponse("gw1", "y"), TopicBatchProperties("gw1"),
		"$oc/devices/gw1/sys/messages/up?request_id=abc", "$oc/devices/gw1/user/x", "", "$oc/devices/",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, topic string) {
		id, k, rid, err := ParseTopic(topic)
		if err != nil {
			if !errors.Is(err, ErrBadTopic) || k != KindUnknown {
				t.Fatalf("ParseTopic(%q) error %v kind %v", topic, err, k)
			}
			return
		}
		if k == KindUnknown || id == "" {
			t.Fatalf("ParseTopic(%q) accepted with kind %v id %q", topic, k, id)
		}
		// Rebuild and compare: the parse is exact.
		var rebuilt string
		switch k {
		case KindMessageUp:
			rebuilt = TopicMessagesUp(id)
			if rid != "" {
				rebuilt += "?request_id=" + rid
			}
		case KindMessage:
			rebuilt = TopicMessagesDown(id)
		case KindPropertiesReport:
			rebuilt = TopicPropertiesReport(id)
		case KindBatchProperties:
			rebuilt = TopicBatchProperties(id)
		case KindEventUp:
			rebuilt = TopicEventsUp(id)
		case KindEvent:
			rebuilt = TopicEventsDown(id)
		case KindBootstrap:
			rebuilt = TopicBootstrapDown(id)
		case KindBootstrapUp:
			rebuilt = TopicBootstrapUp(id)
		case KindCommand:
			rebuilt = TopicCommand(id, rid)
		case KindCommandResponse:
			rebuilt = TopicCommandResponse(id, rid)
		case KindPropertySet:
			rebuilt = TopicPropertySet(id, rid)
		case KindPropertySetResponse:
			rebuilt = TopicPropertySetResponse(id, rid)
		case KindPropertyGet:
			rebuilt = TopicPropertyGet(id, rid)
		case KindPropertyGetResponse:
			rebuilt = TopicPropertyGetResponse(id, rid)
		case KindShadowGet:
			rebuilt = TopicShadowGet(id, rid)
		case KindShadowResponse:
			rebuilt = TopicShadowResponse(id, rid)
		default:
			t.Fatalf("unexpected kind %v", k)
		}
		if rebuilt != topic {
			t.Fatalf("ParseTopic(%q) rebuilt as %q", topic, rebuilt)
		}
	})
}

func FuzzParseMessageDown(f *testing.F) {
	for _, s := range []string{
		`{"object_device_id":"sub1","name":"n","id":"1","content":"hello"}`,
		`{"content":{"a":[1,2]}}`, `{"content":5}`, `{}`, `[]`, `raw bytes`, "",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		m, system := ParseMessageDown(payload)
		if !system {
			if m.ObjectDeviceID != "" || m.Name != "" || m.ID != "" || m.Content != nil {
				t.Fatalf("raw payload %q returned fields", payload)
			}
			return
		}
		// A system message re-encodes and parses to the same value.
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatalf("marshal %+v: %v", m, err)
		}
		m2, system2 := ParseMessageDown(b)
		if !system2 || m2.ObjectDeviceID != m.ObjectDeviceID || m2.Name != m.Name || m2.ID != m.ID ||
			!bytes.Equal(m2.ContentBytes(), m.ContentBytes()) {
			t.Fatalf("re-parse of %s = %+v, %v", b, m2, system2)
		}
	})
}

func FuzzParseEvents(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.json"))
	for _, name := range files {
		if b, err := os.ReadFile(name); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte(`{"services":[{"service_id":"x","event_type":"y","paras":null}]}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		evs, err := ParseEvents(payload)
		if err != nil {
			if !errors.Is(err, ErrBadPayload) {
				t.Fatalf("error %v is not ErrBadPayload", err)
			}
			return
		}
		for _, ev := range evs.Services {
			// Decoding into every paras type must never panic.
			for _, v := range []any{
				new(UpdateStatusParas), new(UpdateStatusResponseParas), new(NotifyParas), new(SyncParas),
				new(AddRequestParas), new(AddResponseParas), new(DeleteRequestParas), new(DeleteResponseParas),
				new(VersionQueryParas), new(UpgradeParas), new(ProgressParas), new(TimeSyncResponseParas),
				new(LogConfigParas),
			} {
				if err := ev.DecodeParas(v); err != nil && !errors.Is(err, ErrBadPayload) {
					t.Fatalf("DecodeParas error %v", err)
				}
				_ = ev.DecodeParasStrict(v)
			}
			var a AddRequestParas
			if ev.DecodeParas(&a) == nil {
				_ = a.Validate()
			}
			var u UpdateStatusParas
			if ev.DecodeParas(&u) == nil {
				_ = u.Validate()
			}
			var up UpgradeParas
			if ev.DecodeParas(&up) == nil {
				_ = up.Validate(ev.EventType)
			}
		}
		if _, err := json.Marshal(evs); err != nil {
			t.Fatalf("re-marshal: %v", err)
		}
	})
}

func FuzzParseClientID(f *testing.F) {
	f.Add("gw1_0_0_2025041401")
	f.Add("a_b_c_0_1_2025041401")
	f.Fuzz(func(t *testing.T, cid string) {
		id, sign, ts, err := ParseClientID(cid)
		if err != nil {
			if !errors.Is(err, ErrBadClientID) {
				t.Fatalf("error %v", err)
			}
			return
		}
		if ClientID(id, sign, ts) != cid {
			t.Fatalf("ParseClientID(%q) does not round trip", cid)
		}
	})
}
