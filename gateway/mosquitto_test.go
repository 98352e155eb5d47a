package gateway

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/subgate/subgate/northbound/iotda"
	"github.com/subgate/subgate/southbound/frame"
)

// TestPlainMosquitto points the gateway at Debian's mosquitto, a plain
// MQTT broker with no IoTDA logic, and checks that it connects, subscribes
// and publishes on the documented topics (iotda-protocol §2.0, §3.6, §2.3).
// An observer client plays the platform's part by hand. It is skipped when
// mosquitto is not installed, unless TEST_MOSQUITTO=required (CI).
func TestPlainMosquitto(t *testing.T) {
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/mosquitto"); serr == nil {
			bin = "/usr/sbin/mosquitto"
		} else if os.Getenv("TEST_MOSQUITTO") == "required" {
			t.Fatal("mosquitto is required (TEST_MOSQUITTO=required) but not installed")
		} else {
			t.Skip("mosquitto not installed (apt-get install mosquitto)")
		}
	}
	port := freePort(t)
	cmd := exec.Command(bin, "-p", fmt.Sprint(port))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	waitListening(t, addr)

	// The observer sees everything the gateway publishes.
	var mu sync.Mutex
	got := map[string][][]byte{}
	arrived := make(chan string, 1024)
	obs := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("tcp://" + addr).SetClientID("observer"))
	if tok := obs.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("observer connect: %v", tok.Error())
	}
	defer obs.Disconnect(0)
	up := "$oc/devices/" + testGW + "/sys/#"
	if tok := obs.Subscribe(up, 1, func(_ mqtt.Client, m mqtt.Message) {
		mu.Lock()
		got[m.Topic()] = append(got[m.Topic()], append([]byte(nil), m.Payload()...))
		mu.Unlock()
		select {
		case arrived <- m.Topic():
		default:
		}
	}); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("observer subscribe: %v", tok.Error())
	}
	waitTopic := func(topic string) []byte {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			mu.Lock()
			ps := got[topic]
			mu.Unlock()
			if len(ps) > 0 {
				return ps[len(ps)-1]
			}
			select {
			case <-arrived:
			case <-deadline:
				t.Fatalf("nothing published on %s; saw %v", topic, keys(&mu, got))
			}
		}
	}

	h := startGateway(t, nil, testConfig(t, addr, "jsonl"))
	// §3.6: a sync request on events/up right after connecting.
	ev := waitTopic(iotda.TopicEventsUp(testGW))
	if !strings.Contains(string(ev), iotda.EventSyncRequest) && !strings.Contains(string(ev), iotda.ServiceSDKInfo) &&
		!strings.Contains(string(ev), iotda.ServiceTimeSync) {
		t.Fatalf("events/up payload: %s", ev)
	}

	// Play the platform: announce a sub-device, then expect its report on
	// the batch topic.
	notify, _ := iotda.NewEvents(testGW, iotda.ServiceSubDeviceManager, iotda.EventAddNotify, "", time.Time{},
		iotda.NotifyParas{Version: 1, Devices: []iotda.DeviceInfo{{ParentDeviceID: testGW, NodeID: "m1", DeviceID: "dev_m1", ProductID: "p"}}})
	if tok := obs.Publish(iotda.TopicEventsDown(testGW), 1, false, notify); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	c := h.dial("jsonl", "m1")
	// The notification may land after the hello: retry the hello until the
	// gateway knows the device (it then answers with its device id).
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, ok := h.gw.Registry().ByID("dev_m1"); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("add notification not applied")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := c.Hello(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if err := c.Send(frame.Frame{Type: frame.TypeProperties, Seq: 1, Services: services("meter", map[string]any{"kwh": 7})}); err != nil {
		t.Fatal(err)
	}
	recvType(t, c, frame.TypeAck)
	var bp iotda.BatchProperties
	if err := json.Unmarshal(waitTopic(iotda.TopicBatchProperties(testGW)), &bp); err != nil {
		t.Fatal(err)
	}
	if len(bp.Devices) != 1 || bp.Devices[0].DeviceID != "dev_m1" || string(bp.Devices[0].Services[0].Properties) != `{"kwh":7}` {
		t.Fatalf("batch report = %+v", bp)
	}
	// ONLINE status on events/up.
	deadline = time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		ps := got[iotda.TopicEventsUp(testGW)]
		mu.Unlock()
		found := false
		for _, p := range ps {
			if strings.Contains(string(p), `"device_id":"dev_m1","status":"ONLINE"`) {
				found = true
			}
		}
		if found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no ONLINE status for dev_m1 on events/up")
		}
		select {
		case <-arrived:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func keys(mu *sync.Mutex, m map[string][][]byte) []string {
	mu.Lock()
	defer mu.Unlock()
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitListening waits until an external process accepts connections.
func waitListening(t testing.TB, addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not listening: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
