package iotdasim

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/subgate/subgate/northbound/iotda"
)

func TestCounterTrack(t *testing.T) {
	for _, tc := range []struct {
		name                    string
		in                      []int64
		max, gaps, dups, reords int64
		holes                   []span
	}{
		{name: "in order", in: []int64{1, 2, 3}, max: 3},
		{name: "first missing", in: []int64{2, 3}, max: 3, gaps: 1, holes: []span{{1, 1}}},
		{name: "gap", in: []int64{1, 5}, max: 5, gaps: 3, holes: []span{{2, 4}}},
		{name: "duplicate", in: []int64{1, 2, 2, 1}, max: 2, dups: 2},
		{name: "late fills middle", in: []int64{1, 5, 3}, max: 5, gaps: 2, reords: 1, holes: []span{{2, 2}, {4, 4}}},
		{name: "late fills ends", in: []int64{1, 5, 2, 4}, max: 5, gaps: 1, reords: 2, holes: []span{{3, 3}}},
		{name: "late fills all", in: []int64{1, 3, 2, 2}, max: 3, reords: 1, dups: 1},
		{name: "replay after reconnect", in: []int64{1, 2, 3, 2, 3, 4}, max: 4, dups: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var d counterTrack
			for _, n := range tc.in {
				d.observe(n)
			}
			if d.max != tc.max || d.gaps != tc.gaps || d.dups != tc.dups || d.reorders != tc.reords {
				t.Fatalf("max %d gaps %d dups %d reorders %d, want %d %d %d %d",
					d.max, d.gaps, d.dups, d.reorders, tc.max, tc.gaps, tc.dups, tc.reords)
			}
			if fmt.Sprint(d.holes) != fmt.Sprint(tc.holes) {
				t.Fatalf("holes %v, want %v", d.holes, tc.holes)
			}
		})
	}
}

func TestCounterTrackBoundsHoles(t *testing.T) {
	var d counterTrack
	for i := range int64(maxHolesPerDevice + 10) {
		d.observe(2*i + 1) // 1, 3, 5, ...: one hole per report after the first
	}
	if len(d.holes) != maxHolesPerDevice {
		t.Fatalf("%d holes kept, want %d", len(d.holes), maxHolesPerDevice)
	}
	if d.forgotten != 9 || d.gaps != maxHolesPerDevice+9 {
		t.Fatalf("forgotten %d gaps %d", d.forgotten, d.gaps)
	}
	d.observe(2) // forgotten: counted as a duplicate
	if d.dups != 1 || d.gaps != maxHolesPerDevice+9 {
		t.Fatalf("dups %d gaps %d after a forgotten value", d.dups, d.gaps)
	}
}

func TestCounterOf(t *testing.T) {
	for in, want := range map[string]int64{
		`[{"service_id":"a","properties":{"n":7}}]`:                                                 7,
		`[{"service_id":"a","properties":{"x":1}},{"service_id":"b","properties":{"n":3,"v":"z"}}]`: 3,
		`[{"service_id":"a","properties":{"n":"7"}}]`:                                               0,
		`[{"service_id":"a","properties":{"n":1.5}}]`:                                               0,
		`[{"service_id":"a","properties":{"n":0}}]`:                                                 0,
		`[{"service_id":"a"}]`:                                                                      0,
	} {
		var svcs []iotda.Service
		if err := json.Unmarshal([]byte(in), &svcs); err != nil {
			t.Fatal(err)
		}
		got, ok := counterOf(svcs)
		if got != want || ok != (want > 0) {
			t.Errorf("%s: %d %v, want %d", in, got, ok, want)
		}
	}
}

// batch publishes one batch report with counter n for each device.
func batch(d *device, counters map[string]int64) {
	var b iotda.BatchProperties
	for id, n := range counters {
		b.Devices = append(b.Devices, iotda.DeviceServices{DeviceID: id, Services: []iotda.Service{
			{ServiceID: "load", Properties: json.RawMessage(fmt.Sprintf(`{"n":%d,"v":"x"}`, n))}}})
	}
	d.publish(iotda.TopicBatchProperties(d.gw), 1, b)
}

func TestDeliveryStats(t *testing.T) {
	s := newSim(t, func(c *Config) {
		c.HTTPListen = "127.0.0.1:0"
		c.MaxRecords = 8
	})
	if _, _, err := s.AddDevices(gw1, []iotda.DeviceInfo{{NodeID: "a", ProductID: "p"}, {NodeID: "b", ProductID: "p"}}); err != nil {
		t.Fatal(err)
	}
	d := connectDevice(t, s, gw1, secret1)
	// p_a: 1 2 4 3 3 (one late, one duplicate); p_b: 1 3 (a gap).
	for _, step := range []map[string]int64{{"p_a": 1, "p_b": 1}, {"p_a": 2}, {"p_a": 4, "p_b": 3}, {"p_a": 3}, {"p_a": 3}} {
		batch(d, step)
	}
	d.publish(iotda.TopicBatchProperties(gw1), 1, iotda.BatchProperties{Devices: []iotda.DeviceServices{
		{DeviceID: "p_b", Services: []iotda.Service{{ServiceID: "load", Properties: json.RawMessage(`{"v":1}`)}}}}})
	waitFor(t, s, "8 reports", func(v *View) bool { return v.PropertyCount("p_a")+v.PropertyCount("p_b") == 8 })

	base := "http://" + s.HTTPAddr() + "/api/stats?gateway=" + gw1
	code, body := httpDo(t, http.MethodGet, base+"&devices=1", "")
	if code != http.StatusOK {
		t.Fatalf("stats: %d %v", code, body)
	}
	want := map[string]float64{
		"devices": 2, "reports": 8, "counted": 7, "without_counter": 1, "distinct": 6, "duplicates": 1,
		"order_violations": 1, "devices_out_of_order": 1, "gaps": 1, "devices_with_gaps": 1,
		"min_per_device": 3, "max_per_device": 5, "unchecked": 0, "violations": 0,
	}
	for k, v := range want {
		if body[k] != v {
			t.Errorf("%s = %v, want %v", k, body[k], v)
		}
	}
	if body["connected"] != true || body["publishes"].(float64) < 6 || body["max_publishes_per_second"].(float64) < 1 {
		t.Errorf("stats %v", body)
	}
	per := body["per_device"].(map[string]any)
	if a := per["p_a"].(map[string]any); a["max_counter"] != 4.0 || a["duplicates"] != 1.0 || a["order_violations"] != 1.0 {
		t.Errorf("p_a %v", a)
	}
	if b := per["p_b"].(map[string]any); b["gaps"] != 1.0 || b["reports"] != 3.0 {
		t.Errorf("p_b %v", b)
	}

	// Ten more reports overflow the recording of eight before the next
	// call: the two dropped unseen are counted, the rest still checked.
	for i := range int64(5) {
		batch(d, map[string]int64{"p_a": 5 + i, "p_b": 4 + i})
	}
	waitFor(t, s, "18 reports", func(v *View) bool { return v.PropertyCount("p_a")+v.PropertyCount("p_b") == 18 })
	st, err := s.Delivery(gw1, false)
	if err != nil {
		t.Fatal(err)
	}
	if st.Unchecked != 2 || st.Reports != 16 || st.PerDevice != nil {
		t.Fatalf("after overflow: %+v", st)
	}

	for _, tc := range []struct {
		url  string
		code int
	}{
		{"/api/stats", http.StatusBadRequest},
		{"/api/stats?gateway=nope", http.StatusNotFound},
		{"/api/stats?gateway=" + gw1 + "&devices=maybe", http.StatusBadRequest},
	} {
		if code, body := httpDo(t, http.MethodGet, "http://"+s.HTTPAddr()+tc.url, ""); code != tc.code {
			t.Errorf("%s: %d %v, want %d", tc.url, code, body, tc.code)
		}
	}
}

// waitOutage waits until cond holds for the outage status.
func waitOutage(t *testing.T, s *Sim, what string, cond func(OutageStatus) bool) OutageStatus {
	t.Helper()
	ctx := ctxT(t)
	for {
		ch := s.OutageChanged()
		st := s.OutageStatus()
		if cond(st) {
			return st
		}
		select {
		case <-ch:
		case <-ctx.Done():
			t.Fatalf("waiting for %s: outage status %+v", what, st)
		}
	}
}

func TestOutageOverHTTP(t *testing.T) {
	s := newSim(t, func(c *Config) { c.HTTPListen = "127.0.0.1:0" })
	addr, httpAddr := s.Addr(), s.HTTPAddr()
	if _, err := dial(t, addr, gw1, secret1, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, s, "connected", func(v *View) bool { return v.Connected(gw1) })
	url := "http://" + httpAddr + "/api/control/outage"

	for _, body := range []string{`{"seconds":0}`, `{"seconds":-1}`, `{"seconds":3601}`, `{"secs":1}`, `[]`} {
		if code, rsp := httpDo(t, http.MethodPost, url, body); code != http.StatusBadRequest {
			t.Errorf("%s: %d %v", body, code, rsp)
		}
	}

	code, rsp := httpDo(t, http.MethodPost, url, `{"seconds":0.3}`)
	if code != http.StatusAccepted || rsp["active"] != true || rsp["outages"] != 1.0 {
		t.Fatalf("outage: %d %v", code, rsp)
	}
	if err := s.Outage(time.Second); err == nil {
		t.Fatal("a second outage while one is active was accepted")
	}
	waitOutage(t, s, "stop", func(st OutageStatus) bool { return !st.StoppedAt.IsZero() })
	if s.Connected(gw1) {
		t.Fatal("gateway connected during the outage")
	}
	st := waitOutage(t, s, "restart", func(st OutageStatus) bool { return !st.Active })
	if st.Error != "" || st.RestartedAt.Before(st.StoppedAt) {
		t.Fatalf("outage ended badly: %+v", st)
	}
	if s.Addr() != addr || s.HTTPAddr() != httpAddr {
		t.Fatalf("addresses changed: %s %s", s.Addr(), s.HTTPAddr())
	}
	// A new client (paho's auto-reconnect races inside paho v1.5.1).
	if _, err := dial(t, addr, gw1, secret1, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, s, "reconnected", func(v *View) bool { return v.Connected(gw1) && v.Connects(gw1) >= 2 })
	code, rsp = httpDo(t, http.MethodGet, url, "")
	if code != http.StatusOK || rsp["active"] != false || rsp["outages"] != 1.0 || rsp["restarted_at"] == nil {
		t.Fatalf("status after the outage: %d %v", code, rsp)
	}
}

func TestOutageCancelledByClose(t *testing.T) {
	s := newSim(t, nil)
	if err := s.Outage(0); err == nil {
		t.Fatal("zero outage accepted")
	}
	if err := s.Outage(time.Hour); err != nil {
		t.Fatal(err)
	}
	waitOutage(t, s, "stop", func(st OutageStatus) bool { return !st.StoppedAt.IsZero() })
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	st := waitOutage(t, s, "end", func(st OutageStatus) bool { return !st.Active })
	if st.Error == "" || !st.RestartedAt.IsZero() {
		t.Fatalf("outage after Close: %+v", st)
	}
	if err := s.Outage(time.Second); err != ErrClosed {
		t.Fatalf("outage after Close: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := s.WaitFor(ctx, func(*View) bool { return false }); err != ErrClosed {
		t.Fatalf("WaitFor after Close: %v", err)
	}
}
