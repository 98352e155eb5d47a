package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/subgate/subgate/southbound/frame"
)

// testTimeout bounds every wait; the tests wait on events, not on time.
const testTimeout = 20 * time.Second

// fakeGateway is a tiny stand-in for subgate's southbound port: it speaks
// the session of docs/device-protocol.md with the frame codecs, one
// goroutine per connection, and counts what it sees.
type fakeGateway struct {
	t     *testing.T
	ln    net.Listener
	codec frame.Codec

	// Behaviour, set before the first connection.
	secret    func(node string) []byte // token auth when non-nil
	refuse    func(node string) bool   // answer the hello with auth_failed
	busyEvery int                      // answer every n-th report with busy instead of an ack
	ackGate   chan struct{}            // when not nil, acks wait until it is closed
	downlink  bool                     // after the welcome, send a command, a property set and a property get
	closeNow  bool                     // close right after the welcome

	logins    atomic.Int64
	reports   atomic.Int64 // properties (native) or messages after the login (demo)
	acksSent  atomic.Int64
	busySent  atomic.Int64
	responses atomic.Int64 // correct answers to the downlink

	// changed gets a token whenever a counter changes.
	changed chan struct{}

	wg        sync.WaitGroup
	closeOnce sync.Once
	mu        sync.Mutex
	conns     []net.Conn
	bad       []string       // protocol violations seen from devices
	perNode   map[string]int // reports by node id
}

func newFakeGateway(t *testing.T, codec string) *fakeGateway {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c, err := frame.ByName(codec)
	if err != nil {
		t.Fatal(err)
	}
	g := &fakeGateway{t: t, ln: ln, codec: c, changed: make(chan struct{}, 1), perNode: map[string]int{}}
	t.Cleanup(g.close)
	return g
}

func (g *fakeGateway) addr() string { return g.ln.Addr().String() }

// start accepts connections; call it after setting the behaviour.
func (g *fakeGateway) start() {
	g.wg.Go(func() {
		for {
			conn, err := g.ln.Accept()
			if err != nil {
				return
			}
			g.mu.Lock()
			g.conns = append(g.conns, conn)
			g.mu.Unlock()
			g.wg.Go(func() {
				defer conn.Close()
				g.serve(&fakeConn{conn: conn, codec: g.codec})
			})
		}
	})
}

// close stops the listener, closes every connection, waits for the
// handlers and fails the test on protocol violations.
func (g *fakeGateway) close() { g.closeOnce.Do(g.shutdown) }

func (g *fakeGateway) shutdown() {
	g.ln.Close()
	g.mu.Lock()
	for _, c := range g.conns {
		c.Close()
	}
	g.mu.Unlock()
	g.wg.Wait()
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, b := range g.bad {
		g.t.Error("fake gateway:", b)
	}
}

func (g *fakeGateway) violation(s string) {
	g.mu.Lock()
	g.bad = append(g.bad, s)
	g.mu.Unlock()
}

func (g *fakeGateway) bump(n *atomic.Int64) {
	n.Add(1)
	g.signal()
}

// reported counts a report of node.
func (g *fakeGateway) reported(node string) int64 {
	g.mu.Lock()
	g.perNode[node]++
	g.mu.Unlock()
	return g.reports.Add(1)
}

// nodesWith returns how many nodes sent at least k reports. A node that
// reported has finished its handshake on its side too.
func (g *fakeGateway) nodesWith(k int) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	for _, c := range g.perNode {
		if c >= k {
			n++
		}
	}
	return n
}

func (g *fakeGateway) signal() {
	select {
	case g.changed <- struct{}{}:
	default:
	}
}

// waitFor returns once cond holds, re-checking it whenever a counter
// changes; at the deadline it marks the test failed and returns. It may
// run on any goroutine.
func (g *fakeGateway) waitFor(what string, cond func() bool) {
	deadline := time.NewTimer(testTimeout)
	defer deadline.Stop()
	for !cond() {
		select {
		case <-g.changed:
		case <-deadline.C:
			g.t.Errorf("timed out waiting for %s", what)
			return
		}
	}
}

func (g *fakeGateway) serve(c *fakeConn) {
	if !g.codec.Native() {
		g.serveDemo(c)
		return
	}
	nonce := []byte("fake-gateway-nonce")
	if g.secret != nil {
		c.write(frame.Frame{Type: frame.TypeChallenge, Nonce: nonce})
	}
	hello, err := c.read()
	if err != nil {
		return
	}
	if hello.Type != frame.TypeHello {
		g.violation("first frame is " + hello.Type.String())
		return
	}
	if g.secret != nil && !frame.CheckProof(g.secret(hello.NodeID), nonce, hello.NodeID, hello.Proof) {
		c.write(frame.Frame{Type: frame.TypeError, Code: frame.CodeAuthFailed, Reason: "bad proof"})
		g.violation("bad proof from " + hello.NodeID)
		return
	}
	if g.refuse != nil && g.refuse(hello.NodeID) {
		c.write(frame.Frame{Type: frame.TypeError, Code: frame.CodeAuthFailed, Reason: "refused"})
		return
	}
	c.write(frame.Frame{Type: frame.TypeWelcome, DeviceID: "product_" + hello.NodeID})
	g.bump(&g.logins)
	if g.closeNow {
		return
	}
	gated := &gatedAcks{g: g, c: c}
	defer gated.wg.Wait()
	want := map[string]frame.Type{}
	if g.downlink {
		id := hello.NodeID
		c.write(frame.Frame{Type: frame.TypeCommand, RequestID: "cmd-" + id, ServiceID: "s", CommandName: "reset", Paras: json.RawMessage(`{"hard":false}`)})
		c.write(frame.Frame{Type: frame.TypePropertySet, RequestID: "set-" + id, Services: json.RawMessage(`[{"service_id":"s","properties":{"x":1}}]`)})
		c.write(frame.Frame{Type: frame.TypePropertyGet, RequestID: "get-" + id})
		want["cmd-"+id] = frame.TypeCommandResponse
		want["set-"+id] = frame.TypePropertySetResponse
		want["get-"+id] = frame.TypePropertyGetResponse
	}
	for {
		f, err := c.read()
		if err != nil {
			return
		}
		switch f.Type {
		case frame.TypeProperties:
			if !bytes.Contains(f.Services, []byte(`"service_id":"devicesim"`)) {
				g.violation("report without the devicesim service: " + string(f.Services))
			}
			n := g.reported(hello.NodeID)
			switch {
			case f.Seq == 0:
			case g.ackGate != nil:
				gated.ack(f.Seq)
			case g.busyEvery > 0 && n%int64(g.busyEvery) == 0:
				c.write(frame.Frame{Type: frame.TypeError, Code: frame.CodeBusy, Seq: f.Seq, Reason: "busy"})
				g.busySent.Add(1)
			default:
				c.write(frame.Frame{Type: frame.TypeAck, Seq: f.Seq})
				g.acksSent.Add(1)
			}
			g.signal()
		case frame.TypeCommandResponse, frame.TypePropertySetResponse, frame.TypePropertyGetResponse:
			if want[f.RequestID] != f.Type || f.ResultCode != 0 {
				g.violation("unexpected answer " + f.Type.String() + " " + f.RequestID)
				continue
			}
			if f.Type == frame.TypePropertyGetResponse && len(f.Services) == 0 {
				g.violation("property get response without services")
			}
			delete(want, f.RequestID)
			g.bump(&g.responses)
		default:
			g.violation("unexpected frame " + f.Type.String())
		}
	}
}

// gatedAcks holds the acks of one connection until fakeGateway.ackGate
// is closed.
type gatedAcks struct {
	g     *fakeGateway
	c     *fakeConn
	wg    sync.WaitGroup
	mu    sync.Mutex
	held  []uint32
	start sync.Once
}

func (a *gatedAcks) ack(seq uint32) {
	a.mu.Lock()
	a.held = append(a.held, seq)
	a.mu.Unlock()
	a.start.Do(func() { a.wg.Go(a.flush) })
	select {
	case <-a.g.ackGate:
		a.flushHeld()
	default:
	}
}

func (a *gatedAcks) flush() {
	<-a.g.ackGate
	a.flushHeld()
}

func (a *gatedAcks) flushHeld() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, seq := range a.held {
		a.c.write(frame.Frame{Type: frame.TypeAck, Seq: seq})
		a.g.acksSent.Add(1)
	}
	a.held = nil
}

// serveDemo reads "<id>|<content>" lines; the first logs in.
func (g *fakeGateway) serveDemo(c *fakeConn) {
	first := true
	for {
		f, err := c.read()
		if err != nil {
			return
		}
		if f.Type != frame.TypeMessage || !strings.HasPrefix(f.NodeID, "demo") {
			g.violation("bad demo message " + f.NodeID)
			return
		}
		if first && g.refuse != nil && g.refuse(f.NodeID) {
			c.writeRaw([]byte("error: " + f.NodeID + " is not allowed\n"))
			continue
		}
		if first {
			first = false
			c.writeRaw([]byte("sub device: " + f.NodeID + " go online\n"))
			g.bump(&g.logins)
			continue
		}
		g.reported(f.NodeID)
		g.signal()
	}
}

// fakeConn is the gateway's side of one connection.
type fakeConn struct {
	conn  net.Conn
	codec frame.Codec
	buf   []byte
	chunk [4096]byte
}

func (c *fakeConn) read() (frame.Frame, error) {
	for {
		if len(c.buf) > 0 {
			f, n, err := c.codec.Decode(c.buf, false)
			if !errors.Is(err, frame.ErrIncomplete) {
				f = f.Clone()
				c.buf = c.buf[n:]
				return f, err
			}
		}
		n, err := c.conn.Read(c.chunk[:])
		if err != nil {
			return frame.Frame{}, err
		}
		c.buf = append(c.buf, c.chunk[:n]...)
	}
}

func (c *fakeConn) write(f frame.Frame) {
	b, err := c.codec.AppendEncode(nil, f)
	if err != nil {
		panic("fake gateway cannot encode " + f.Type.String() + ": " + err.Error())
	}
	c.writeRaw(b)
}

func (c *fakeConn) writeRaw(b []byte) {
	// Errors mean the device went away; its side of the test reports it.
	c.conn.Write(b)
}

// testConfig is a quick run against addr: no pacing, no hold, short
// bounds.
func testConfig(addr, codec string, n int) config {
	return config{
		Addr: addr, Codec: codec, N: n, Prefix: "dev", ConnectRate: 0, ConnectBurst: 1,
		MaxPending: 4, ConnectTimeout: testTimeout, Payload: 32, Window: 8,
		Duration: testTimeout, RecvQueue: 4,
	}
}

// runSim runs cfg until it ends by itself, or until stop (if not nil)
// returns, then cancels it and returns the summary.
func runSim(t *testing.T, cfg config, stop func()) Summary {
	t.Helper()
	s, err := newSim(cfg, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	return runNewSim(t, s, stop)
}

func runNewSim(t *testing.T, s *sim, stop func()) Summary {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var wg sync.WaitGroup
	if stop != nil {
		wg.Go(func() {
			stop()
			cancel()
		})
	}
	sum := s.run(ctx)
	cancel()
	wg.Wait()
	if sum.Phase != phaseDone || sum.Online != 0 {
		t.Errorf("after run: phase %s, online %d", sum.Phase, sum.Online)
	}
	return sum
}

func TestReportsAndAcks(t *testing.T) {
	for _, codec := range []string{"jsonl", "binary"} {
		t.Run(codec, func(t *testing.T) {
			const n, perDevice = 5, 4
			g := newFakeGateway(t, codec)
			g.busyEvery = 2
			g.start()
			cfg := testConfig(g.addr(), codec, n)
			cfg.MsgRate = 200
			cfg.Ack = true
			// With a window of one, a device sends its next report only
			// after it handled the outcome of the last one: at most n
			// outcomes are unhandled when the run stops.
			cfg.Window = 1
			cfg.Hold = time.Hour // ended by the test once enough reports came
			sum := runSim(t, cfg, func() {
				g.waitFor("reports", func() bool { return g.nodesWith(perDevice) == n })
			})
			g.close()
			if sum.Connected != n || sum.Failed != 0 || sum.Devices != n {
				t.Errorf("connected %d/%d failed %d", sum.Connected, sum.Devices, sum.Failed)
			}
			// Every report the gateway got was counted as sent, and got
			// exactly one outcome: an ack, a busy, or none before close.
			if sum.FramesOut != g.reports.Load() {
				t.Errorf("frames_out %d, gateway got %d reports", sum.FramesOut, g.reports.Load())
			}
			if got := sum.Acks + sum.Busy + sum.Unacked; got != sum.FramesOut {
				t.Errorf("acks %d + busy %d + unacked %d = %d, want frames_out %d", sum.Acks, sum.Busy, sum.Unacked, got, sum.FramesOut)
			}
			if sum.Acks+sum.Busy < sum.FramesOut-n {
				t.Errorf("acks %d + busy %d handled, below frames_out %d - %d", sum.Acks, sum.Busy, sum.FramesOut, n)
			}
			if sum.Acks > g.acksSent.Load() || sum.Busy > g.busySent.Load() || sum.Acks == 0 || sum.Busy == 0 {
				t.Errorf("acks %d (sent %d), busy %d (sent %d)", sum.Acks, g.acksSent.Load(), sum.Busy, g.busySent.Load())
			}
			if sum.FramesIn != sum.Acks+sum.Busy+int64(sum.ErrorKinds["stray_ack"]) {
				t.Errorf("frames_in %d, acks %d, busy %d", sum.FramesIn, sum.Acks, sum.Busy)
			}
			if sum.Errors != sum.Busy || sum.ErrorKinds["error_busy"] != sum.Busy {
				t.Errorf("errors %d %v, want only %d busy", sum.Errors, sum.ErrorKinds, sum.Busy)
			}
			if sum.AckP50MS <= 0 || sum.AckP50MS > sum.AckP99MS || sum.AckP99MS > sum.AckMaxMS {
				t.Errorf("ack latency p50 %v p99 %v max %v", sum.AckP50MS, sum.AckP99MS, sum.AckMaxMS)
			}
		})
	}
}

func TestAnswers(t *testing.T) {
	const n = 4
	g := newFakeGateway(t, "jsonl")
	g.downlink = true
	g.start()
	cfg := testConfig(g.addr(), "jsonl", n)
	cfg.Answer = true
	cfg.Hold = time.Hour
	sum := runSim(t, cfg, func() {
		g.waitFor("answers", func() bool { return g.responses.Load() == 3*n })
	})
	if sum.CmdsAnswered != n || sum.PropsAnswered != 2*n || sum.FramesIn != 3*n || sum.FramesOut != 3*n {
		t.Errorf("answered %d commands, %d properties; frames in %d out %d", sum.CmdsAnswered, sum.PropsAnswered, sum.FramesIn, sum.FramesOut)
	}
	if sum.Errors != 0 {
		t.Errorf("errors %v", sum.ErrorKinds)
	}
}

func TestTokenDeriveAndRefusal(t *testing.T) {
	const n = 6
	master := []byte("master-key")
	g := newFakeGateway(t, "binary")
	g.secret = func(node string) []byte { return deriveSecret(master, node) }
	g.refuse = func(node string) bool { return node == "dev3" }
	g.start()
	cfg := testConfig(g.addr(), "binary", n)
	cfg.Secret, cfg.Derive = master, true
	// -hold 0: the run ends by itself once every handshake finished.
	sum := runSim(t, cfg, nil)
	if sum.Connected != n-1 || sum.Failed != 1 || sum.ErrorKinds["refused_auth_failed"] != 1 || sum.Errors != 1 {
		t.Errorf("connected %d failed %d errors %v", sum.Connected, sum.Failed, sum.ErrorKinds)
	}
	// The fake gateway counts a login after writing its welcome, so the
	// count may trail the device side for a moment.
	g.waitFor("logins counted", func() bool { return g.logins.Load() >= n-1 })
	if g.logins.Load() != n-1 {
		t.Errorf("gateway logins %d", g.logins.Load())
	}
}

func TestClosedByGatewayEndsHold(t *testing.T) {
	const n = 3
	g := newFakeGateway(t, "jsonl")
	g.closeNow = true
	g.start()
	cfg := testConfig(g.addr(), "jsonl", n)
	cfg.Hold = time.Hour // ended because no device is left
	sum := runSim(t, cfg, nil)
	if sum.Connected != n || sum.ErrorKinds["closed"] != n {
		t.Errorf("connected %d, errors %v", sum.Connected, sum.ErrorKinds)
	}
}

func TestDialFailure(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	sum := runSim(t, testConfig(addr, "jsonl", 3), nil)
	if sum.Connected != 0 || sum.Failed != 3 || sum.ErrorKinds["dial"] != 3 {
		t.Errorf("connected %d failed %d errors %v", sum.Connected, sum.Failed, sum.ErrorKinds)
	}
}

func TestDemo(t *testing.T) {
	const n, perDevice = 3, 3
	g := newFakeGateway(t, "demo")
	g.refuse = func(node string) bool { return node == "demo3" }
	g.start()
	cfg := testConfig(g.addr(), "demo", n+1)
	cfg.Prefix = "demo"
	cfg.MsgRate = 200
	cfg.Hold = time.Hour
	sum := runSim(t, cfg, func() {
		g.waitFor("demo reports", func() bool { return g.nodesWith(perDevice) == n })
	})
	g.close()
	if sum.Connected != n || g.logins.Load() != n || sum.Failed != 1 || sum.ErrorKinds["refused_demo"] != 1 || sum.Errors != 1 {
		t.Errorf("connected %d failed %d, gateway logins %d, errors %v", sum.Connected, sum.Failed, g.logins.Load(), sum.ErrorKinds)
	}
	// The login messages count as sent, the refused one too; each got a
	// reply line.
	if sum.FramesOut != n+1+g.reports.Load() || sum.FramesIn != n+1 {
		t.Errorf("frames_out %d frames_in %d, gateway got %d logins and %d reports", sum.FramesOut, sum.FramesIn, n, g.reports.Load())
	}
}

func TestSourceAddresses(t *testing.T) {
	const n = 4
	g := newFakeGateway(t, "jsonl")
	g.start()
	cfg := testConfig(g.addr(), "jsonl", n)
	cfg.Sources = []string{"127.0.0.2", "127.0.0.3"}
	sum := runSim(t, cfg, nil) // -hold 0: ends once all connected
	// 127.0.0.0/8 is local on Linux: the gateway sees the chosen sources.
	count := map[string]int{}
	g.mu.Lock()
	for _, c := range g.conns {
		host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
		count[host]++
	}
	g.mu.Unlock()
	if sum.Connected != n || count["127.0.0.2"] != 2 || count["127.0.0.3"] != 2 {
		t.Errorf("connected %d, sources %v", sum.Connected, count)
	}
}

func TestDrain(t *testing.T) {
	const n, window = 3, 3
	g := newFakeGateway(t, "binary")
	g.ackGate = make(chan struct{}) // no ack before the hold ended
	g.start()
	cfg := testConfig(g.addr(), "binary", n)
	cfg.MsgRate = 500
	cfg.Ack = true
	cfg.Window = window
	cfg.Drain = testTimeout
	cfg.Hold = time.Hour
	s, err := newSim(cfg, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	// The hold ends once every device has a full window of reports at
	// the gateway, none acked; the acks come only after that, and the
	// drain must wait for them.
	endHold := make(chan time.Time)
	s.holdTimer = func(time.Duration) (<-chan time.Time, func() bool) { return endHold, func() bool { return true } }
	var wg sync.WaitGroup
	wg.Go(func() {
		g.waitFor("full windows", func() bool { return g.nodesWith(window) == n })
		close(endHold)
		close(g.ackGate)
	})
	sum := runNewSim(t, s, nil)
	wg.Wait()
	if sum.Connected != n || sum.FramesOut != n*window || sum.Acks != sum.FramesOut || sum.Unacked != 0 || sum.Errors != 0 {
		t.Errorf("connected %d frames_out %d acks %d unacked %d errors %v", sum.Connected, sum.FramesOut, sum.Acks, sum.Unacked, sum.ErrorKinds)
	}
	if s.inflight.Load() != 0 {
		t.Errorf("%d reports still in flight", s.inflight.Load())
	}
}
