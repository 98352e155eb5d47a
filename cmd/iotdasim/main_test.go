package main

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/subgate/subgate/northbound/iotdasim"
)

// syncBuffer is a bytes.Buffer safe for the writer goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestRunServesAndStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncBuffer
	ready := make(chan *iotdasim.Sim, 1)
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"-listen", "127.0.0.1:0", "-http", "127.0.0.1:0", "-device", "gw1:s1", "-device", "gw2:s2", "-log-level", "WARN"},
			&stdout, &stderr, func(s *iotdasim.Sim) { ready <- s })
	}()
	var sim *iotdasim.Sim
	select {
	case sim = <-ready:
	case code := <-done:
		t.Fatalf("exited %d: %s", code, stderr.String())
	case <-time.After(10 * time.Second):
		t.Fatal("not ready")
	}
	out := stdout.String()
	if !strings.Contains(out, sim.Addr()) || !strings.Contains(out, "gw1, gw2") || !strings.Contains(out, "curl") || strings.Contains(out, "s1") {
		t.Fatalf("banner:\n%s", out)
	}
	rsp, err := http.Get("http://" + sim.HTTPAddr() + "/api/devices?gateway=gw2")
	if err != nil {
		t.Fatal(err)
	}
	rsp.Body.Close()
	if rsp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", rsp.StatusCode)
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("did not stop")
	}
}

func TestRunBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-device", "nosecret"},
		{"-device", "a:1", "-device", "a:2"},
		{"extra"},
		{"-listen", ""},
	} {
		var out, errb syncBuffer
		if code := run(context.Background(), args, &out, &errb, nil); code == 0 {
			t.Errorf("%q: exit 0", args)
		}
	}
}
