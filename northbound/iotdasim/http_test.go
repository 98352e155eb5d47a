package iotdasim

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/subgate/subgate/northbound/iotda"
)

func httpDo(t *testing.T, method, url, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctxT(t), method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	rsp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer rsp.Body.Close()
	b, err := io.ReadAll(rsp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if ct := rsp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("%s %s: content type %q", method, url, ct)
	}
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("%s %s: %s: %v", method, url, b, err)
	}
	return rsp.StatusCode, out
}

func TestHTTPAPI(t *testing.T) {
	s := newSim(t, func(c *Config) { c.HTTPListen = "127.0.0.1:0" })
	base := "http://" + s.HTTPAddr()

	code, out := httpDo(t, "POST", base+"/api/devices", `{"gateway":"gw1","node_id":"n1","product_id":"p","name":"kitchen"}`)
	if code != http.StatusCreated || out["device_id"] != "p_n1" || out["status"] != "INACTIVE" {
		t.Fatalf("add: %d %v", code, out)
	}
	if code, out = httpDo(t, "POST", base+"/api/devices", `{"gateway":"gw1","node_id":"n1","product_id":"p"}`); code != http.StatusConflict {
		t.Fatalf("duplicate add: %d %v", code, out)
	}
	code, out = httpDo(t, "GET", base+"/api/devices?gateway=gw1", "")
	if devs, _ := out["devices"].([]any); code != http.StatusOK || len(devs) != 1 || out["version"] != 1.0 || out["connected"] != false {
		t.Fatalf("devices: %d %v", code, out)
	}

	// Command while disconnected: 409.
	if code, out = httpDo(t, "POST", base+"/api/commands", `{"gateway":"gw1","device_id":"p_n1","service_id":"s","command_name":"c"}`); code != http.StatusConflict {
		t.Fatalf("command offline: %d %v", code, out)
	}
	d := connectDevice(t, s, gw1, secret1)
	res := call(t, func() (map[string]any, error) {
		_, out := httpDo(t, "POST", base+"/api/commands", `{"gateway":"gw1","device_id":"p_n1","service_id":"s","command_name":"c","paras":{"v":1}}`)
		return out, nil
	})
	m := d.recv()
	_, _, rid, _ := iotda.ParseTopic(m.topic)
	d.publish(iotda.TopicCommandResponse(gw1, rid), 1, iotda.CommandResponse{ResultCode: 0, ResponseName: "done"})
	if out, _ := await(t, res); out["response_name"] != "done" {
		t.Fatalf("command: %v", out)
	}
	// A device that does not answer: 504 after timeout_ms.
	res = call(t, func() (map[string]any, error) {
		code, out := httpDo(t, "POST", base+"/api/commands", `{"gateway":"gw1","service_id":"s","command_name":"c","timeout_ms":100}`)
		out["code"] = float64(code)
		return out, nil
	})
	d.recv()
	if out, _ := await(t, res); out["code"] != float64(http.StatusGatewayTimeout) || out["error"] == nil {
		t.Fatalf("timeout: %v", out)
	}

	res = call(t, func() (map[string]any, error) {
		_, out := httpDo(t, "POST", base+"/api/properties/set", `{"gateway":"gw1","device_id":"p_n1","services":[{"service_id":"s","properties":{"a":1}}]}`)
		return out, nil
	})
	m = d.recv()
	_, _, rid, _ = iotda.ParseTopic(m.topic)
	d.publish(iotda.TopicPropertySetResponse(gw1, rid), 1, iotda.PropertySetResponse{ResultCode: 3, ResultDesc: "no"})
	if out, _ := await(t, res); out["result_code"] != 3.0 {
		t.Fatalf("set: %v", out)
	}
	res = call(t, func() (map[string]any, error) {
		_, out := httpDo(t, "POST", base+"/api/properties/get", `{"gateway":"gw1","device_id":"p_n1"}`)
		return out, nil
	})
	m = d.recv()
	_, _, rid, _ = iotda.ParseTopic(m.topic)
	d.publish(iotda.TopicPropertyGetResponse(gw1, rid), 1, iotda.PropertyGetResponse{Services: []iotda.Service{{ServiceID: "s"}}})
	if out, _ := await(t, res); out["services"] == nil {
		t.Fatalf("get: %v", out)
	}

	if code, out = httpDo(t, "POST", base+"/api/messages", `{"gateway":"gw1","device_id":"p_n1","content":{"k":"v"}}`); code != http.StatusAccepted {
		t.Fatalf("message: %d %v", code, out)
	}
	if m = d.recv(); !bytes.Contains(m.payload, []byte(`"content":{"k":"v"}`)) {
		t.Fatalf("message payload %s", m.payload)
	}
	if code, out = httpDo(t, "POST", base+"/api/events", `{"gateway":"gw1","device_id":"p_n1","service_id":"$ota","event_type":"version_query"}`); code != http.StatusAccepted {
		t.Fatalf("event: %d %v", code, out)
	}
	if _, ev := d.recvEvent(); ev.EventType != iotda.EventVersionQuery {
		t.Fatalf("event %+v", ev)
	}

	d.publish(iotda.TopicMessagesUp(gw1), 1, iotda.MessageUp{ObjectDeviceID: "p_n1", Content: json.RawMessage(`"up"`)})
	waitFor(t, s, "message", func(v *View) bool { return v.MessageCount("p_n1") == 1 })
	code, out = httpDo(t, "GET", base+"/api/received?gateway=gw1&limit=5", "")
	if msgs, _ := out["messages"].([]any); code != http.StatusOK || len(msgs) != 1 || msgs[0].(map[string]any)["content"] != "up" {
		t.Fatalf("received: %d %v", code, out)
	}

	if code, out = httpDo(t, "DELETE", base+"/api/devices/p_n1", ""); code != http.StatusOK || out["gateway"] != gw1 {
		t.Fatalf("delete: %d %v", code, out)
	}
	if _, ev := d.recvEvent(); ev.EventType != iotda.EventDeleteNotify {
		t.Fatalf("delete notify %+v", ev)
	}

	for _, tc := range []struct {
		method, path, body string
		want               int
	}{
		{"DELETE", "/api/devices/p_n1", "", http.StatusNotFound},
		{"GET", "/api/devices?gateway=nobody", "", http.StatusNotFound},
		{"GET", "/api/received?gateway=gw1&limit=0", "", http.StatusBadRequest},
		{"POST", "/api/commands", `{"gateway":"gw1","bogus":1}`, http.StatusBadRequest},
		{"POST", "/api/commands", `{"gateway":"gw1"}`, http.StatusBadRequest},
		{"POST", "/api/commands", `not json`, http.StatusBadRequest},
		{"POST", "/api/messages", `{"gateway":"gw1","content":[1]}`, http.StatusBadRequest},
		{"POST", "/api/events", `{"gateway":"gw1","service_id":"$ota","event_type":"x","paras":[1]}`, http.StatusBadRequest},
		{"POST", "/api/devices", `{"gateway":"gw1","node_id":"bad node","product_id":"p"}`, http.StatusBadRequest},
		{"GET", "/nope", "", http.StatusNotFound},
	} {
		if code, out := httpDo(t, tc.method, base+tc.path, tc.body); code != tc.want || out["error"] == nil {
			t.Errorf("%s %s %s: %d %v, want %d with an error", tc.method, tc.path, tc.body, code, out, tc.want)
		}
	}
	code, out = httpDo(t, "GET", base+"/api/errors", "")
	if code != http.StatusOK || out["violations"] != 0.0 {
		t.Fatalf("errors: %d %v", code, out)
	}
}
