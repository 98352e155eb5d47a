package main

import (
	"context"
	"encoding/json"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/subgate/subgate/northbound/iotdasim"
)

// TestRunServesLoadAPI: -load-http serves the load API on its own
// listener, named in the banner, and stops with the simulator.
func TestRunServesLoadAPI(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncBuffer
	ready := make(chan *iotdasim.Sim, 1)
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"-listen", "127.0.0.1:0", "-http", "", "-load-http", "127.0.0.1:0", "-device", "gw1:s1", "-log-level", "WARN"},
			&stdout, &stderr, func(s *iotdasim.Sim) { ready <- s })
	}()
	select {
	case <-ready:
	case code := <-done:
		t.Fatalf("exited %d: %s", code, stderr.String())
	case <-time.After(10 * time.Second):
		t.Fatal("not ready")
	}
	m := regexp.MustCompile(`load API on (http://[0-9.:]+)`).FindStringSubmatch(stdout.String())
	if m == nil {
		t.Fatalf("banner names no load API:\n%s", stdout.String())
	}
	rsp, err := http.Post(m[1]+"/api/load/devices", "application/json",
		strings.NewReader(`{"gateway":"gw1","product_id":"p","prefix":"n","count":120,"status":"OFFLINE"}`))
	if err != nil {
		t.Fatal(err)
	}
	rsp.Body.Close()
	if rsp.StatusCode != http.StatusCreated {
		t.Fatalf("bulk add: HTTP %d", rsp.StatusCode)
	}
	rsp, err = http.Get(m[1] + "/api/load/status?gateway=gw1")
	if err != nil {
		t.Fatal(err)
	}
	var sum iotdasim.StatusSummary
	err = json.NewDecoder(rsp.Body).Decode(&sum)
	rsp.Body.Close()
	if err != nil || sum.Devices != 120 || sum.ByStatus["OFFLINE"] != 120 || sum.Version != 3 {
		t.Fatalf("status: %+v, %v", sum, err)
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return")
	}
	if _, err := http.Get(m[1] + "/api/load/status?gateway=gw1"); err == nil {
		t.Fatal("load API still serving after exit")
	}
}

// TestRunLoadAPIBadAddress: an address that cannot be bound fails the run.
func TestRunLoadAPIBadAddress(t *testing.T) {
	var stdout, stderr syncBuffer
	code := run(context.Background(), []string{"-listen", "127.0.0.1:0", "-http", "", "-load-http", "256.0.0.1:1", "-log-level", "WARN"},
		&stdout, &stderr, nil)
	if code != 1 || !strings.Contains(stderr.String(), "load API") {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
}
