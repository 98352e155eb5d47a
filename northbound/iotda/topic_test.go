package iotda

import (
	"errors"
	"strings"
	"testing"
)

func TestTopicBuildersParse(t *testing.T) {
	const gw, rid = "gw_1-a", "0b6a53a1-8e10-4e2f"
	for _, tc := range []struct {
		topic string
		want  string
		kind  Kind
		rid   string
	}{
		{TopicMessagesUp(gw), "$oc/devices/gw_1-a/sys/messages/up", KindMessageUp, ""},
		{TopicMessagesDown(gw), "$oc/devices/gw_1-a/sys/messages/down", KindMessage, ""},
		{TopicPropertiesReport(gw), "$oc/devices/gw_1-a/sys/properties/report", KindPropertiesReport, ""},
		{TopicBatchProperties(gw), "$oc/devices/gw_1-a/sys/gateway/sub_devices/properties/report", KindBatchProperties, ""},
		{TopicEventsUp(gw), "$oc/devices/gw_1-a/sys/events/up", KindEventUp, ""},
		{TopicEventsDown(gw), "$oc/devices/gw_1-a/sys/events/down", KindEvent, ""},
		{TopicBootstrapUp(gw), "$oc/devices/gw_1-a/sys/bootstrap/up", KindBootstrapUp, ""},
		{TopicBootstrapDown(gw), "$oc/devices/gw_1-a/sys/bootstrap/down", KindBootstrap, ""},
		{TopicCommand(gw, rid), "$oc/devices/gw_1-a/sys/commands/request_id=" + rid, KindCommand, rid},
		{TopicCommandResponse(gw, rid), "$oc/devices/gw_1-a/sys/commands/response/request_id=" + rid, KindCommandResponse, rid},
		{TopicPropertySet(gw, rid), "$oc/devices/gw_1-a/sys/properties/set/request_id=" + rid, KindPropertySet, rid},
		{TopicPropertySetResponse(gw, rid), "$oc/devices/gw_1-a/sys/properties/set/response/request_id=" + rid, KindPropertySetResponse, rid},
		{TopicPropertyGet(gw, rid), "$oc/devices/gw_1-a/sys/properties/get/request_id=" + rid, KindPropertyGet, rid},
		{TopicPropertyGetResponse(gw, rid), "$oc/devices/gw_1-a/sys/properties/get/response/request_id=" + rid, KindPropertyGetResponse, rid},
		{TopicShadowGet(gw, rid), "$oc/devices/gw_1-a/sys/shadow/get/request_id=" + rid, KindShadowGet, rid},
		{TopicShadowResponse(gw, rid), "$oc/devices/gw_1-a/sys/shadow/get/response/request_id=" + rid, KindShadowResponse, rid},
		{"$oc/devices/gw_1-a/sys/messages/up?request_id=abc", "$oc/devices/gw_1-a/sys/messages/up?request_id=abc", KindMessageUp, "abc"},
	} {
		if tc.topic != tc.want {
			t.Errorf("builder = %q, want %q", tc.topic, tc.want)
		}
		id, k, r, err := ParseTopic(tc.topic)
		if err != nil {
			t.Errorf("ParseTopic(%q): %v", tc.topic, err)
			continue
		}
		if id != gw || k != tc.kind || r != tc.rid {
			t.Errorf("ParseTopic(%q) = %q %v %q, want %q %v %q", tc.topic, id, k, r, gw, tc.kind, tc.rid)
		}
	}
}

func TestKindDirection(t *testing.T) {
	down := []Kind{KindMessage, KindCommand, KindPropertySet, KindPropertyGet, KindShadowResponse, KindEvent, KindBootstrap}
	up := []Kind{KindMessageUp, KindPropertiesReport, KindBatchProperties, KindEventUp, KindCommandResponse,
		KindPropertySetResponse, KindPropertyGetResponse, KindShadowGet, KindBootstrapUp}
	seen := map[string]bool{}
	for _, k := range down {
		if k.Up() {
			t.Errorf("%v is down", k)
		}
		seen[k.String()] = true
	}
	for _, k := range up {
		if !k.Up() {
			t.Errorf("%v is up", k)
		}
		seen[k.String()] = true
	}
	if len(seen) != len(down)+len(up) {
		t.Errorf("kind names are not unique: %v", seen)
	}
	if KindUnknown.String() != "unknown" || Kind(99).String() != "kind(99)" || Kind(-1).String() != "kind(-1)" {
		t.Error("unexpected String for unknown kinds")
	}
}

func TestParseTopicErrors(t *testing.T) {
	for _, topic := range []string{
		"",
		"$oc/devices/",
		"$oc/devices/gw1",
		"$oc/devices//sys/messages/up",
		"$oc/devices/gw 1/sys/messages/up",
		"$oc/devices/gw1/sys/messages/up/",
		"$oc/devices/gw1/sys/messages/upx",
		"$oc/devices/gw1/sys/messages",
		"$oc/devices/gw1/user/custom",
		"$oc/devices/gw1/sys/commands/",
		"$oc/devices/gw1/sys/commands/request_id=",
		"$oc/devices/gw1/sys/commands/request_id=a/b",
		"$oc/devices/gw1/sys/commands/request_id=a+b",
		"$oc/devices/gw1/sys/commands/request_id=#",
		"$oc/devices/gw1/sys/commands/request_id=\x00",
		"$oc/devices/gw1/sys/commands/request_id=" + strings.Repeat("r", MaxRequestIDLen+1),
		"$oc/devices/gw1/sys/commands/response/",
		"$oc/devices/gw1/sys/commands/response/request_id=",
		"$oc/devices/gw1/sys/commands/responserequest_id=x",
		"$oc/devices/gw1/sys/commands/rid=1",
		"$oc/devices/gw1/sys/properties/set/response/foo",
		"$oc/devices/gw1/sys/shadow/get/response",
		"$oc/devices/gw1/sys/events/up?request_id=1",
		"$oc/devices/gw1/sys/messages/up?encoding=gzip",
		"$oc/devices/gw1/sys/messages/up?request_id=",
		"$oc/devices/gw1/sys/messages/up?request_id=a&b=c",
		"/huawei/v1/devices/gw1/data/json",
		"prefix$oc/devices/gw1/sys/messages/up",
		"$OC/devices/gw1/sys/messages/up",
	} {
		id, k, rid, err := ParseTopic(topic)
		if !errors.Is(err, ErrBadTopic) {
			t.Errorf("ParseTopic(%q) = %q %v %q %v, want ErrBadTopic", topic, id, k, rid, err)
		}
		if k != KindUnknown || id != "" || rid != "" {
			t.Errorf("ParseTopic(%q) returned values with an error", topic)
		}
	}
}

func TestSubscriptions(t *testing.T) {
	subs := Subscriptions("gw1")
	want := []string{
		"$oc/devices/gw1/sys/messages/down",
		"$oc/devices/gw1/sys/commands/#",
		"$oc/devices/gw1/sys/properties/set/#",
		"$oc/devices/gw1/sys/properties/get/#",
		"$oc/devices/gw1/sys/shadow/get/response/#",
		"$oc/devices/gw1/sys/events/down",
	}
	if strings.Join(subs, "\n") != strings.Join(want, "\n") {
		t.Fatalf("Subscriptions = %q", subs)
	}
	if len(subs) > MaxSubscriptions {
		t.Fatal("too many subscriptions")
	}
}

func TestTopicDevice(t *testing.T) {
	for topic, want := range map[string]string{
		"$oc/devices/gw1/sys/messages/up": "gw1",
		"$oc/devices/gw1/user/custom":     "gw1",
		"$oc/devices/gw1/":                "gw1",
	} {
		if got, ok := TopicDevice(topic); !ok || got != want {
			t.Errorf("TopicDevice(%q) = %q %v", topic, got, ok)
		}
	}
	for _, topic := range []string{"policy/topic", "$oc/devices/gw1", "$oc/devices//x", "$oc/bridges/b/devices/d"} {
		if _, ok := TopicDevice(topic); ok {
			t.Errorf("TopicDevice(%q) ok", topic)
		}
	}
}

func BenchmarkParseTopic(b *testing.B) {
	topic := TopicPropertySetResponse("product_node-0001", "0b6a53a1-8e10-4e2f-b4a6-6a0c6a1e8d11")
	b.ReportAllocs()
	b.SetBytes(int64(len(topic)))
	for b.Loop() {
		if _, _, _, err := ParseTopic(topic); err != nil {
			b.Fatal(err)
		}
	}
}

func TestParseTopicAllocs(t *testing.T) {
	topic := TopicCommand("product_node-0001", "0b6a53a1-8e10-4e2f")
	if n := testing.AllocsPerRun(100, func() { _, _, _, _ = ParseTopic(topic) }); n != 0 {
		t.Fatalf("ParseTopic allocates %v times per call", n)
	}
}
