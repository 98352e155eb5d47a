package gateway

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/subgate/subgate/northbound/iotda"
	"github.com/subgate/subgate/northbound/iotdasim"
	"github.com/subgate/subgate/southbound/frame"
)

func TestParseCustomTopics(t *testing.T) {
	ct, err := parseCustomTopics([]string{"alarm=up:user/alarms", "cfg=down:user/config/{gateway_id}", "legacy=both:factory/line1"}, "gw1")
	if err != nil {
		t.Fatal(err)
	}
	if ct.byName["alarm"].topic != "$oc/devices/gw1/user/alarms" || !ct.byName["alarm"].up || ct.byName["alarm"].down {
		t.Fatalf("alarm = %+v", ct.byName["alarm"])
	}
	if ct.byName["cfg"].topic != "$oc/devices/gw1/user/config/gw1" {
		t.Fatalf("cfg = %+v", ct.byName["cfg"])
	}
	if len(ct.downTopics()) != 2 {
		t.Fatalf("down topics = %v", ct.downTopics())
	}
	for _, bad := range []string{"x", "a=sideways:user/a", "a=up:user/a//b", "a=up:$oc/devices/other/user/a",
		"a=up:t/#", "b c=up:user/x", "a=up:" + strings.Repeat("x", 129)} {
		if _, err := parseCustomTopics([]string{bad}, "gw1"); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestCustomTopicsBothWays: a device message named after a custom topic is
// published there with the sub-device in object_device_id, and a platform
// message on a down custom topic reaches the device named in it.
func TestCustomTopicsBothWays(t *testing.T) {
	sim := startSim(t, "127.0.0.1:0")
	cfg := testConfig(t, sim.Addr(), "jsonl")
	cfg.Northbound.CustomTopics = []string{"alarm=both:user/alarms"}
	h := startGateway(t, sim, cfg)
	c, devID := h.login("jsonl", "cust1")
	if err := c.Send(frame.Frame{Type: frame.TypeMessage, Seq: 1, Name: "alarm", Content: []byte(`{"level":3}`)}); err != nil {
		t.Fatal(err)
	}
	recvType(t, c, frame.TypeAck)
	topic := "$oc/devices/" + testGW + "/user/alarms"
	h.waitSim("custom topic uplink", func(v *iotdasim.View) bool {
		for _, m := range v.Messages() {
			if m.Topic == topic && strings.Contains(string(m.Content), devID) && strings.Contains(string(m.Content), `"level":3`) {
				return true
			}
		}
		return false
	})
	payload, _ := json.Marshal(iotda.MessageUp{ObjectDeviceID: devID, Content: json.RawMessage(`"reset alarm"`)})
	if err := sim.PublishCustom(testGW, topic, payload); err != nil {
		t.Fatal(err)
	}
	m := recvType(t, c, frame.TypeMessage)
	if m.Name != "alarm" || string(m.Content) != "reset alarm" {
		t.Fatalf("custom downlink = %+v", m)
	}
}

// TestBootstrap: with only a provisioning endpoint configured, the gateway
// asks it for the access address, keeps the answer, and connects there
// (iotda-protocol §5.6).
func TestBootstrap(t *testing.T) {
	platform := startSim(t, "127.0.0.1:0")
	bcfg := iotdasim.DevConfig()
	bcfg.Listen = "127.0.0.1:0"
	bcfg.Devices = map[string]string{testGW: testSecret}
	bcfg.BootstrapAddress = platform.Addr()
	bs, err := iotdasim.New(bcfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := bs.Start(); err != nil {
		t.Fatal(err)
	}
	defer bs.Close()

	cfg := testConfig(t, platform.Addr(), "jsonl")
	cfg.Northbound.Server = ""
	cfg.Northbound.BootstrapServer = "tcp://" + bs.Addr()
	h := startGateway(t, platform, cfg)
	b, ok, err := h.gw.st.Meta(bootstrapKey)
	if err != nil || !ok || !strings.Contains(string(b), platform.Addr()) {
		t.Fatalf("stored bootstrap answer = %s, %v, %v", b, ok, err)
	}
}

// TestLogReports: connect and loss entries are reported as $log while the
// switch is on, and not after log_config switches it off.
func TestLogReports(t *testing.T) {
	sim := startSim(t, "127.0.0.1:0")
	h := startGateway(t, sim, testConfig(t, sim.Addr(), "jsonl"))
	h.waitSim("connect log entry", func(v *iotdasim.View) bool {
		for _, e := range v.EventsOf(iotda.EventLogReport) {
			if strings.Contains(string(e.Event.Paras), "connect complete") {
				return true
			}
		}
		return false
	})
	sim.Disconnect(testGW)
	h.waitSim("loss log entry after reconnect", func(v *iotdasim.View) bool {
		for _, e := range v.EventsOf(iotda.EventLogReport) {
			if strings.Contains(string(e.Event.Paras), "connection lost") {
				return true
			}
		}
		return false
	})
	if err := sim.SendEvent(testGW, "", iotda.ServiceLog, iotda.EventLogConfig, iotda.LogConfigParas{Switch: "off"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "switch off", func() bool { return !h.gw.logAllowed() })
}
