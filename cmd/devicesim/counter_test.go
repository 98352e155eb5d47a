package main

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/subgate/subgate/southbound/frame"
)

func TestCounterServices(t *testing.T) {
	c := newCounterReports(payload(5))
	for _, n := range []uint64{1, 42, 1 << 40} {
		var svcs []struct {
			ServiceID  string `json:"service_id"`
			Properties struct {
				N     uint64 `json:"n"`
				Value string `json:"value"`
			} `json:"properties"`
		}
		raw := c.services(n)
		if err := json.Unmarshal(raw, &svcs); err != nil {
			t.Fatalf("%s: %v", raw, err)
		}
		if len(svcs) != 1 || svcs[0].ServiceID != reportService || svcs[0].Properties.N != n || svcs[0].Properties.Value != "01234" {
			t.Fatalf("services(%d) = %s", n, raw)
		}
	}
}

func TestCounterNeedsNativeCodec(t *testing.T) {
	_, _, err := parseFlags([]string{"-codec", "demo", "-counter"}, io.Discard)
	if !errors.Is(err, errUsage) {
		t.Fatalf("demo with -counter: %v", err)
	}
	c, _, err := parseFlags([]string{"-codec", "binary", "-counter"}, io.Discard)
	if err != nil || !c.Counter {
		t.Fatalf("binary with -counter: %v %+v", err, c)
	}
}

// counterGateway accepts one device, welcomes it and records the counter
// of each report. It holds the ack of the first report until hold
// returns, so that the device's ack window fills and reports are skipped.
type counterGateway struct {
	ln    net.Listener
	codec frame.Codec
	hold  func()
	mu    sync.Mutex
	ns    []uint64
	got   chan struct{} // a token after each report
	bad   []string
	wg    sync.WaitGroup
}

func (g *counterGateway) serve(t *testing.T) {
	g.wg.Go(func() {
		conn, err := g.ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		c := &fakeConn{conn: conn, codec: g.codec}
		hello, err := c.read()
		if err != nil || hello.Type != frame.TypeHello {
			g.fail("no hello")
			return
		}
		c.write(frame.Frame{Type: frame.TypeWelcome, DeviceID: "p_" + hello.NodeID})
		for first := true; ; first = false {
			f, err := c.read()
			if err != nil {
				return
			}
			var svcs []struct {
				Properties struct {
					N uint64 `json:"n"`
				} `json:"properties"`
			}
			if f.Type != frame.TypeProperties || json.Unmarshal(f.Services, &svcs) != nil || len(svcs) != 1 {
				g.fail("bad report " + f.Type.String() + " " + string(f.Services))
				return
			}
			if first {
				g.hold()
			}
			g.mu.Lock()
			g.ns = append(g.ns, svcs[0].Properties.N)
			g.mu.Unlock()
			c.write(frame.Frame{Type: frame.TypeAck, Seq: f.Seq})
			select {
			case g.got <- struct{}{}:
			default:
			}
		}
	})
}

func (g *counterGateway) fail(s string) {
	g.mu.Lock()
	g.bad = append(g.bad, s)
	g.mu.Unlock()
}

func (g *counterGateway) count() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.ns)
}

// TestCounterNumbersSentReports: a device numbers its reports 1, 2, 3...
// with no gap where reports were skipped because its ack window was full.
func TestCounterNumbersSentReports(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	codec, err := frame.ByName(frame.NameBinary)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(ln.Addr().String(), frame.NameBinary, 1)
	cfg.MsgRate, cfg.Ack, cfg.Counter, cfg.Window, cfg.Hold = 500, true, true, 1, time.Hour
	s, err := newSim(cfg, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	g := &counterGateway{ln: ln, codec: codec, got: make(chan struct{}, 1)}
	// Skipped reports have no event to wait on: poll the counter, bounded.
	g.hold = func() {
		deadline := time.Now().Add(testTimeout)
		for s.st.skipped.Load() < 3 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
	}
	g.serve(t)
	defer func() {
		ln.Close()
		g.wg.Wait()
	}()
	const want = 6
	sum := runNewSim(t, s, func() {
		deadline := time.After(testTimeout)
		for g.count() < want {
			select {
			case <-g.got:
			case <-deadline:
				return
			}
		}
	})
	if sum.Skipped < 3 {
		t.Fatalf("skipped %d reports, want >= 3 (the window never filled)", sum.Skipped)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.bad) > 0 {
		t.Fatal(g.bad)
	}
	// With a window of one, at most one report was on its way when the
	// run stopped.
	if got := int64(len(g.ns)); got < want || got > sum.FramesOut || got < sum.FramesOut-1 {
		t.Fatalf("gateway got %d reports, device sent %d", got, sum.FramesOut)
	}
	for i, n := range g.ns {
		if n != uint64(i+1) {
			t.Fatalf("report %d carries n=%d: %v", i, n, g.ns)
		}
	}
}
