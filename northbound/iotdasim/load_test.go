package iotdasim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/subgate/subgate/northbound/iotda"
)

// answeringGateway is the fake device side of the load tests: a gateway
// MQTT client that answers commands for its sub-devices by the rule of
// answer, from paho's callback goroutine. hold, when set, delays every
// answer until that many commands have arrived, which only a sender that
// does not wait for answers can satisfy.
type answeringGateway struct {
	c       paho.Client
	answer  func(sub string) (code int, reply bool)
	hold    int
	mu      sync.Mutex
	got     int
	held    []heldAnswer // answers waiting for hold
	objects map[string]int
}

type heldAnswer struct {
	rid  string
	code int
}

func startAnsweringGateway(t *testing.T, s *Sim, hold int, answer func(sub string) (int, bool)) *answeringGateway {
	t.Helper()
	a := &answeringGateway{answer: answer, hold: hold, objects: map[string]int{}}
	d, err := dial(t, s.Addr(), gw1, secret1, func(o *paho.ClientOptions) {
		o.SetDefaultPublishHandler(func(c paho.Client, m paho.Message) { a.handle(c, m) })
	})
	if err != nil {
		t.Fatalf("connect %s: %v", gw1, err)
	}
	a.c = d.c
	waitFor(t, s, "gateway connected", func(v *View) bool { return v.Connected(gw1) })
	return a
}

func (a *answeringGateway) handle(c paho.Client, m paho.Message) {
	_, kind, rid, err := iotda.ParseTopic(m.Topic())
	if err != nil || kind != iotda.KindCommand {
		return
	}
	var cmd iotda.Command
	if json.Unmarshal(m.Payload(), &cmd) != nil {
		return
	}
	code, reply := a.answer(cmd.ObjectDeviceID)
	a.mu.Lock()
	a.got++
	a.objects[cmd.ObjectDeviceID]++
	var due []heldAnswer
	if reply {
		a.held = append(a.held, heldAnswer{rid: rid, code: code})
	}
	if a.got >= a.hold {
		due, a.held = a.held, nil
	}
	a.mu.Unlock()
	for _, h := range due {
		b, _ := json.Marshal(iotda.CommandResponse{ResultCode: h.code, ResponseName: "pong"})
		// QoS 0 and no wait: this runs on paho's callback goroutine.
		c.Publish(iotda.TopicCommandResponse(gw1, h.rid), 0, false, b)
	}
}

func (a *answeringGateway) received() (int, map[string]int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[string]int, len(a.objects))
	for k, v := range a.objects {
		out[k] = v
	}
	return a.got, out
}

func addLoadDevices(t *testing.T, s *Sim, nodes ...string) []string {
	t.Helper()
	devs := make([]iotda.DeviceInfo, len(nodes))
	for i, n := range nodes {
		devs[i] = iotda.DeviceInfo{NodeID: n, ProductID: "p"}
	}
	added, _, err := s.AddDevices(gw1, devs)
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]string, len(added))
	for i, d := range added {
		ids[i] = d.DeviceID
	}
	return ids
}

// TestCommandLoadOutcomes: round robin over three devices that answer OK,
// answer with a failure and do not answer; every command is accounted for
// once and only OK answers make the percentiles.
func TestCommandLoadOutcomes(t *testing.T) {
	s := newSim(t, nil)
	ids := addLoadDevices(t, s, "ok", "bad", "mute")
	a := startAnsweringGateway(t, s, 0, func(sub string) (int, bool) {
		switch sub {
		case "p_ok":
			return 0, true
		case "p_bad":
			return 1, true
		}
		return 0, false
	})
	st := s.CommandLoad(ctxT(t), gw1, ids, 500, 30, 300*time.Millisecond)
	if st.Sent != 30 || st.OK != 10 || st.Failed != 10 || st.TimedOut != 10 || st.Targets != 3 {
		t.Fatalf("stats = %+v", st)
	}
	if !strings.Contains(st.FirstError, "result_code 1") {
		t.Fatalf("first error = %q", st.FirstError)
	}
	if st.P50 <= 0 || st.P50 > st.P90 || st.P90 > st.P99 || st.P99 > st.Max || st.Max > st.Elapsed {
		t.Fatalf("latencies out of order: %+v", st)
	}
	if got, per := a.received(); got != 30 || per["p_ok"] != 10 || per["p_bad"] != 10 || per["p_mute"] != 10 {
		t.Fatalf("device side got %d commands: %v", got, per)
	}
	b, err := json.Marshal(st)
	if err != nil || !strings.Contains(string(b), `"timed_out":10`) || !strings.Contains(string(b), `"p99_ms":`) {
		t.Fatalf("JSON = %s, %v", b, err)
	}
}

// TestCommandLoadConcurrent: the device answers nothing until it has all
// 20 commands, so a sender that waited for each answer would time out.
func TestCommandLoadConcurrent(t *testing.T) {
	s := newSim(t, nil)
	ids := addLoadDevices(t, s, "a", "b")
	startAnsweringGateway(t, s, 20, func(string) (int, bool) { return 0, true })
	st := s.CommandLoad(ctxT(t), gw1, ids, 1000, 20, 5*time.Second)
	if st.Sent != 20 || st.OK != 20 || st.TimedOut != 0 || st.Failed != 0 {
		t.Fatalf("stats = %+v", st)
	}
}

// TestCommandLoadRefusals: bad arguments send nothing; a cancelled
// context stops sending; a disconnected gateway fails every command.
func TestCommandLoadRefusals(t *testing.T) {
	s := newSim(t, nil)
	ids := addLoadDevices(t, s, "x")
	for name, c := range map[string]struct {
		targets []string
		rate    float64
		total   int
		timeout time.Duration
	}{
		"no targets":    {nil, 10, 1, time.Second},
		"zero rate":     {ids, 0, 1, time.Second},
		"rate too high": {ids, MaxLoadRate + 1, 1, time.Second},
		"zero total":    {ids, 10, 0, time.Second},
		"too many":      {ids, 10, MaxLoadTotal + 1, time.Second},
		"too long":      {ids, 0.001, 10, time.Second},
		"no timeout":    {ids, 10, 1, 0},
	} {
		st := s.CommandLoad(ctxT(t), gw1, c.targets, c.rate, c.total, c.timeout)
		if st.Sent != 0 || !strings.Contains(st.FirstError, ErrLoad.Error()) {
			t.Errorf("%s: %+v", name, st)
		}
	}
	// Not connected: each command fails at once with the reason.
	st := s.CommandLoad(ctxT(t), gw1, ids, 1000, 5, time.Second)
	if st.Sent != 5 || st.Failed != 5 || !strings.Contains(st.FirstError, ErrNotConnected.Error()) {
		t.Fatalf("disconnected: %+v", st)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if st := s.CommandLoad(ctx, gw1, ids, 10, 100, time.Second); st.Sent != 0 {
		t.Fatalf("cancelled: %+v", st)
	}
}

// TestAddDevicesBulk: one notification per chunk of 50, one version per
// chunk, all or nothing, seeded OFFLINE status kept, and a sync from
// version 0 replays the records in notifications of at most 50.
func TestAddDevicesBulk(t *testing.T) {
	s := newSim(t, nil)
	d := connectDevice(t, s, gw1, secret1)
	devs := make([]iotda.DeviceInfo, 120)
	for i := range devs {
		devs[i] = iotda.DeviceInfo{NodeID: fmt.Sprintf("n%d", i), ProductID: "p", Status: iotda.StatusOffline}
	}
	added, version, err := s.AddDevices(gw1, devs)
	if err != nil || len(added) != 120 || version != 3 {
		t.Fatalf("AddDevices = %d records, version %d, %v", len(added), version, err)
	}
	want := []int{50, 50, 20}
	for i, n := range want {
		_, ev := d.recvEvent()
		var p iotda.NotifyParas
		decodeParas(t, ev, &p)
		if ev.EventType != iotda.EventAddNotify || len(p.Devices) != n || p.Version != int64(i+1) {
			t.Fatalf("notification %d: %s with %d devices at version %d", i, ev.EventType, len(p.Devices), p.Version)
		}
	}
	if st := s.Status(gw1, "p_n7"); st != iotda.StatusOffline {
		t.Fatalf("seeded status = %q", st)
	}

	// All or nothing: one duplicate node id refuses the whole call.
	_, _, err = s.AddDevices(gw1, []iotda.DeviceInfo{{NodeID: "fresh", ProductID: "p"}, {NodeID: "n3", ProductID: "q"}})
	if !errors.Is(err, ErrDeviceExists) || len(s.Devices(gw1)) != 120 || s.Version(gw1) != 3 {
		t.Fatalf("duplicate: %v, %d devices, version %d", err, len(s.Devices(gw1)), s.Version(gw1))
	}
	for name, bad := range map[string][]iotda.DeviceInfo{
		"none":         nil,
		"no product":   {{NodeID: "z"}},
		"bad node":     {{NodeID: "a b", ProductID: "p"}},
		"online":       {{NodeID: "z", ProductID: "p", Status: iotda.StatusOnline}},
		"twice":        {{NodeID: "z", ProductID: "p"}, {NodeID: "z2", ProductID: "p", DeviceID: "p_z"}},
		"bad parent":   {{NodeID: "z", ProductID: "p", ParentDeviceID: "nobody"}},
		"bad ext info": {{NodeID: "z", ProductID: "p", ExtensionInfo: json.RawMessage(`[1]`)}},
	} {
		if _, _, err := s.AddDevices(gw1, bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, _, err := s.AddDevices("nobody", devs[:1]); !errors.Is(err, ErrUnknownGateway) {
		t.Fatalf("unknown gateway: %v", err)
	}

	d.event("", iotda.ServiceSubDeviceManager, iotda.EventSyncRequest, "", iotda.SyncParas{Version: 0})
	total := 0
	for total < 120 {
		_, ev := d.recvEvent()
		var p iotda.NotifyParas
		decodeParas(t, ev, &p)
		if ev.EventType != iotda.EventAddNotify || len(p.Devices) > iotda.MaxAddPerRequest {
			t.Fatalf("sync replay: %s with %d devices", ev.EventType, len(p.Devices))
		}
		total += len(p.Devices)
	}
	if total != 120 {
		t.Fatalf("sync replayed %d devices", total)
	}
}

// TestSummarizeReports checks the sliding one-second window and the
// per-message maximum on hand-made arrival times.
func TestSummarizeReports(t *testing.T) {
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	up := func(ms, n int) StatusUpdate {
		return StatusUpdate{Gateway: gw1, Statuses: make([]iotda.DeviceStatus, n), At: t0.Add(time.Duration(ms) * time.Millisecond)}
	}
	// Windows ending at each message: [0,999] holds 100+50+7=157; (0,1000]
	// drops the message at 0: 50+7+100=157; (400,1400] adds 1: 158. Fixed
	// one-second buckets would see 157 and 101.
	rs := SummarizeReports([]StatusUpdate{up(1000, 100), up(0, 100), up(500, 50), up(999, 7), up(1400, 1)})
	if rs.Messages != 5 || rs.Entries != 258 || rs.MaxEntries != 100 || rs.MaxEntriesPerSecond != 158 {
		t.Fatalf("stats = %+v", rs)
	}
	if !rs.First.Equal(t0) || !rs.Last.Equal(t0.Add(1400*time.Millisecond)) {
		t.Fatalf("first/last = %v %v", rs.First, rs.Last)
	}
	if rs := SummarizeReports(nil); rs.Messages != 0 || rs.MaxEntriesPerSecond != 0 {
		t.Fatalf("empty = %+v", rs)
	}
}

func loadDo(t *testing.T, method, url, body string) (int, map[string]any) {
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
	var out map[string]any
	if err := json.NewDecoder(rsp.Body).Decode(&out); err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return rsp.StatusCode, out
}

// TestLoadHTTP drives the load API: bulk add, a command run by prefix,
// the status summary, and 400 for absurd values.
func TestLoadHTTP(t *testing.T) {
	s := newSim(t, nil)
	srv := httptest.NewServer(s.LoadHandler())
	t.Cleanup(srv.Close)
	base := srv.URL + "/api/load/"

	code, out := loadDo(t, "POST", base+"devices", `{"gateway":"gw1","product_id":"p","prefix":"m","offset":10,"count":60}`)
	if code != http.StatusCreated || out["added"] != 60.0 || out["version"] != 2.0 {
		t.Fatalf("devices: %d %v", code, out)
	}
	startAnsweringGateway(t, s, 0, func(string) (int, bool) { return 0, true })
	code, out = loadDo(t, "POST", base+"commands", `{"gateway":"gw1","prefix":"m1","rate":500,"total":40,"timeout_ms":5000}`)
	// Node ids m10..m19 and m100+ do not exist: m1 matches m10-m19 (10).
	if code != http.StatusOK || out["sent"] != 40.0 || out["ok"] != 40.0 || out["targets"] != 10.0 {
		t.Fatalf("commands: %d %v", code, out)
	}

	s.mu.Lock()
	s.gateways[gw1].devices["p_m12"].Status = iotda.StatusOnline
	s.mu.Unlock()
	code, out = loadDo(t, "GET", base+"status?gateway=gw1&prefix=m&from=10&to=20", "")
	matching, _ := out["matching"].(map[string]any)
	others, _ := out["others"].(map[string]any)
	if code != http.StatusOK || out["devices"] != 60.0 || matching["ONLINE"] != 1.0 || matching["INACTIVE"] != 9.0 || others["INACTIVE"] != 50.0 {
		t.Fatalf("status: %d %v", code, out)
	}

	for _, c := range []struct{ method, path, body string }{
		{"POST", "devices", `{"gateway":"gw1","product_id":"p","prefix":"q","count":50001}`},
		{"POST", "devices", `{"gateway":"gw1","product_id":"p","prefix":"q","count":1,"status":"ONLINE"}`},
		{"POST", "devices", `{"gateway":"gw1","product_id":"p","prefix":"q","count":1,"bogus":1}`},
		{"POST", "commands", `{"gateway":"gw1","prefix":"m","rate":1e9,"total":10}`},
		{"POST", "commands", `{"gateway":"gw1","prefix":"m","rate":10,"total":100000000}`},
		{"POST", "commands", `{"gateway":"gw1","prefix":"m","rate":10,"total":10,"timeout_ms":-1}`},
		{"POST", "commands", `{"gateway":"gw1","rate":10,"total":10}`},
		{"POST", "commands", `{"gateway":"gw1","prefix":"m","device_ids":["p_m10"],"rate":10,"total":10}`},
		{"GET", "status?gateway=gw1&since=yesterday", ""},
		{"GET", "status?gateway=gw1&prefix=m&from=-1", ""},
	} {
		if code, out := loadDo(t, c.method, base+c.path, c.body); code != http.StatusBadRequest || out["error"] == nil {
			t.Errorf("%s %s %s: %d %v", c.method, c.path, c.body, code, out)
		}
	}
	if code, _ := loadDo(t, "GET", base+"status?gateway=nobody", ""); code != http.StatusNotFound {
		t.Fatalf("unknown gateway: %d", code)
	}
	if code, _ := loadDo(t, "POST", base+"commands", `{"gateway":"gw1","prefix":"zz","rate":10,"total":1}`); code != http.StatusNotFound {
		t.Fatalf("no matching devices: %d", code)
	}
}
