package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/subgate/subgate/northbound/iotda"
	"github.com/subgate/subgate/northbound/iotdasim"
	"github.com/subgate/subgate/southbound/frame"
	"github.com/subgate/subgate/southbound/southboundtest"
)

// Sizes of the automated flood (issue 3, done-when 2); cmd/devicesim
// -flood runs it at full scale against a real gateway process.
const (
	floodGood       = 20 // well-behaved devices reporting throughout
	floodEvery      = 40 * time.Millisecond
	floodMaxFrame   = 32 << 10         // southbound.max_frame
	floodOutbound   = 32 << 10         // southbound.max_outbound
	floodHello      = time.Second      // southbound.hello_timeout
	floodPerIP      = 40               // southbound.max_conns_per_ip
	floodHalfOpen   = floodPerIP + 5   // half-open sockets from one address
	floodBadFrames  = 3                // southbound.max_bad_frames
	floodRate       = 50               // southbound.rate_per_sec and rate_burst
	floodRateStrike = 20               // southbound.DefaultRateStrikes (not a gateway key)
	floodChurners   = 5                // connect/hello/close loops
	floodChurns     = 8                // cycles per churner
	floodAttempts   = 3                // oversize, garbage and badauth connections
	floodAttackerIP = "127.0.0.2"      // source of the half-open sockets
	floodSecretBase = "flood-secret-"  // + node id
	floodDeadline   = 10 * time.Second // bound on each attack
)

func floodSecret(node string) []byte { return []byte(floodSecretBase + node) }

// metricSeries sums the series of family name whose label has value (0
// when there is none).
func metricSeries(t testing.TB, h *harness, name, label, value string) float64 {
	t.Helper()
	v, err := gatherSeries(h, name, label, value)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// gatherSeries is metricSeries for goroutines other than the test's.
func gatherSeries(h *harness, name, label, value string) (float64, error) {
	mfs, err := h.reg.Gather()
	if err != nil {
		return 0, err
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() != label || lp.GetValue() != value {
					continue
				}
				switch {
				case m.Counter != nil:
					sum += m.Counter.GetValue()
				case m.Gauge != nil:
					sum += m.Gauge.GetValue()
				}
			}
		}
	}
	return sum, nil
}

// series names one labelled series of a southbound metric.
type series struct{ name, label, value string }

func (s series) String() string { return fmt.Sprintf("%s{%s=%q}", s.name, s.label, s.value) }

func limitHit(v string) series { return series{"subgate_southbound_limit_hits_total", "limit", v} }
func disconnect(v string) series {
	return series{"subgate_southbound_disconnects_total", "reason", v}
}
func decodeError(v string) series { return series{"subgate_southbound_decode_errors_total", "code", v} }
func reject(v string) series      { return series{"subgate_southbound_rejects_total", "reason", v} }

// dialDevice connects a device client from src ("" = any) with secret for
// the token challenge.
func dialDevice(ctx context.Context, h *harness, node, src string, secret []byte) (*southboundtest.Client, error) {
	return southboundtest.Dial(ctx, southboundtest.Options{Addr: h.addr(), Codec: frame.NameJSONL, NodeID: node,
		Secret: secret, LocalAddr: src})
}

// errorCodes receives until the gateway closes c and returns the codes of
// the error frames it sent; an error if it does not close in time.
func errorCodes(c *southboundtest.Client) ([]frame.ErrorCode, error) {
	ctx, cancel := context.WithTimeout(context.Background(), floodDeadline)
	defer cancel()
	var codes []frame.ErrorCode
	for {
		f, err := c.Recv(ctx)
		if err != nil {
			if isClosed(err) {
				return codes, nil
			}
			return codes, fmt.Errorf("gateway did not close (after errors %v): %w", codes, err)
		}
		if f.Type == frame.TypeError {
			codes = append(codes, f.Code)
		}
	}
}

// wantCodes checks that the error frames were exactly want, in order.
func wantCodes(what string, got []frame.ErrorCode, want ...frame.ErrorCode) error {
	if fmt.Sprint(got) != fmt.Sprint(want) {
		return fmt.Errorf("%s: error frames %v, want %v", what, got, want)
	}
	return nil
}

// goodDevice reports properties with acks, one at a time, until stopped.
type goodDevice struct {
	node, id string
	c        *southboundtest.Client

	// mu guards the following fields.
	mu    sync.Mutex
	acked int // reports acked, hence stored
	busy  int // reports refused (busy or rate limited) and sent again
	err   error
}

func (d *goodDevice) counts() (acked, busy int, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.acked, d.busy, d.err
}

// run sends a report every floodEvery, waits for its ack and sends it
// again after a refusal; it stops at the first failure.
func (d *goodDevice) run(stop <-chan struct{}) {
	tick := time.NewTicker(floodEvery)
	defer tick.Stop()
	for seq := uint32(1); ; {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		f := frame.Frame{Type: frame.TypeProperties, Seq: seq,
			Services: services("meter", map[string]any{"n": seq})}
		ok, err := d.report(f)
		d.mu.Lock()
		switch {
		case err != nil:
			d.err = fmt.Errorf("%s report %d: %w", d.node, seq, err)
		case ok:
			d.acked++
			seq++
		default:
			d.busy++
		}
		d.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// report sends f and waits for its answer: true for an ack, false for a
// refusal to retry.
func (d *goodDevice) report(f frame.Frame) (bool, error) {
	if err := d.c.Send(f); err != nil {
		return false, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), floodDeadline)
	defer cancel()
	for {
		got, err := d.c.Recv(ctx)
		if err != nil {
			return false, err
		}
		switch {
		case got.Type == frame.TypeAck && got.Seq == f.Seq:
			return true, nil
		case got.Type == frame.TypeError && got.Seq == f.Seq && (got.Code == frame.CodeBusy || got.Code == frame.CodeRateLimited):
			return false, nil
		case got.Type == frame.TypeError:
			return false, fmt.Errorf("error frame %s: %s", got.Code, got.Reason)
		}
	}
}

// floodConfig is the gateway under attack: token auth and small bounds.
func floodConfig(t *testing.T, simAddr string) Config {
	cfg := testConfig(t, simAddr, frame.NameJSONL)
	sb := &cfg.Southbound
	sb.Auth = "token"
	sb.MaxFrame = floodMaxFrame
	sb.MaxOutbound = floodOutbound
	sb.HelloTimeout = floodHello
	sb.MaxConnsPerIP = floodPerIP
	sb.MaxBadFrames = floodBadFrames
	sb.RatePerSec = floodRate
	sb.RateBurst = floodRate
	return cfg
}

// TestFlood: floodGood devices report continuously, acked, while attackers
// churn, send oversize frames and garbage, stop reading, hold half-open
// sockets past the per-address limit, fail the token proof and exceed the
// uplink rate. Every good report is acked and reaches the platform, no
// good device is disconnected, each bad input gets its error frame (where
// the protocol has one) and moves its metric, the northbound session stays
// up, and the goroutines return to where they were.
func TestFlood(t *testing.T) {
	probe, err := net.DialTCP("tcp", &net.TCPAddr{IP: net.ParseIP(floodAttackerIP)}, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9})
	if err != nil && strings.Contains(err.Error(), "assign") {
		t.Skipf("cannot use %s as a source address here: %v", floodAttackerIP, err)
	}
	if probe != nil {
		probe.Close()
	}
	sim := startSim(t, "127.0.0.1:0")
	h := startGateway(t, sim, floodConfig(t, sim.Addr()))
	ctx := ctxT(t)

	// Secrets for every device that should log in.
	nodes := []string{"slow0", "spam0", "bad0"}
	for i := range floodGood {
		nodes = append(nodes, "good"+strconv.Itoa(i))
	}
	for i := range floodChurners {
		nodes = append(nodes, "churn"+strconv.Itoa(i))
	}
	for _, n := range nodes {
		if err := h.gw.st.PutSecret(ctx, n, floodSecret(n)); err != nil {
			t.Fatal(err)
		}
	}

	// The well-behaved devices log in and start reporting.
	good := make([]*goodDevice, floodGood)
	for i := range good {
		node := "good" + strconv.Itoa(i)
		c, err := dialDevice(ctx, h, node, "", floodSecret(node))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		w, err := c.Hello(ctx)
		if err != nil {
			t.Fatalf("hello %s: %v", node, err)
		}
		good[i] = &goodDevice{node: node, id: w.DeviceID, c: c}
	}
	h.waitSim("good devices ONLINE", func(v *iotdasim.View) bool {
		for _, d := range good {
			if v.Status(testGW, d.id) != iotda.StatusOnline {
				return false
			}
		}
		return true
	})
	stop := make(chan struct{})
	var reporters sync.WaitGroup
	for _, d := range good {
		reporters.Go(func() { d.run(stop) })
	}
	stopReporters := sync.OnceFunc(func() { close(stop); reporters.Wait() })
	t.Cleanup(stopReporters)

	// The slow reader and the spammer log in before the attack starts, so
	// that the platform knows them.
	slow := dialSlow(t, h, "slow0")
	spam, err := dialDevice(ctx, h, "spam0", "", floodSecret("spam0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { spam.Close() })
	spamWelcome, err := spam.Hello(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h.waitSim("slow0 and spam0 ONLINE", func(v *iotdasim.View) bool {
		return v.Status(testGW, slow.id) == iotda.StatusOnline && v.Status(testGW, spamWelcome.DeviceID) == iotda.StatusOnline
	})

	watched := []series{
		limitHit("max_frame"), limitHit("outbound"), limitHit("hello_timeout"), limitHit("max_conns_per_ip"), limitHit("rate"),
		disconnect("peer"), disconnect("kicked"), disconnect("too_large"), disconnect("bad_frames"), disconnect("slow_reader"),
		disconnect("rejected"), disconnect("rate_limited"),
		decodeError("too_large"), decodeError("bad_frame"),
		reject("hello_timeout"), reject("max_conns_per_ip"), reject("auth_failed"),
	}
	before := map[series]float64{}
	for _, s := range watched {
		before[s] = metricSeries(t, h, s.name, s.label, s.value)
	}
	ackedBefore := make([]int, len(good))
	for i, d := range good {
		ackedBefore[i], _, _ = d.counts()
	}
	// Goroutines while only the good devices run: the count to return to.
	baseGoroutines := runtime.NumGoroutine()

	var attacks errgroup.Group
	var halfOpenCodes map[frame.ErrorCode]int // read after Wait
	attacks.Go(func() error { return churn(h) })
	attacks.Go(func() error { return oversize(h) })
	attacks.Go(func() error { return garbage(h) })
	attacks.Go(func() error { return slowReader(h, slow) })
	attacks.Go(func() (err error) {
		halfOpenCodes, err = halfOpen(h)
		return err
	})
	attacks.Go(func() error { return badAuth(h) })
	attacks.Go(func() error { return spamRate(spam) })
	if err := attacks.Wait(); err != nil {
		t.Fatal(err)
	}

	// The good devices kept being acked during the attack, and none failed.
	for i, d := range good {
		acked, busy, err := d.counts()
		if err != nil {
			t.Fatalf("good device: %v", err)
		}
		if acked <= ackedBefore[i] {
			t.Errorf("%s: %d acks before the attack, %d after", d.node, ackedBefore[i], acked)
		}
		if busy > 0 {
			t.Logf("%s: %d reports refused and sent again", d.node, busy)
		}
	}

	// Each bad input moved its metric.
	delta := func(s series) float64 { return metricSeries(t, h, s.name, s.label, s.value) - before[s] }
	timeouts, refusedPerIP := halfOpenCodes[frame.CodeTimeout], halfOpenCodes[frame.CodeTooManyConns]
	want := map[series]float64{
		limitHit("max_frame"):        floodAttempts,
		decodeError("too_large"):     floodAttempts,
		disconnect("too_large"):      floodAttempts,
		decodeError("bad_frame"):     floodAttempts * floodBadFrames,
		disconnect("bad_frames"):     floodAttempts,
		limitHit("outbound"):         1,
		disconnect("slow_reader"):    1,
		limitHit("hello_timeout"):    float64(timeouts),
		reject("hello_timeout"):      float64(timeouts),
		limitHit("max_conns_per_ip"): float64(refusedPerIP),
		reject("max_conns_per_ip"):   float64(refusedPerIP),
		reject("auth_failed"):        floodAttempts,
		limitHit("rate"):             floodRateStrike,
		disconnect("rate_limited"):   1,
		// Hello timeouts and refused proofs close "rejected".
		disconnect("rejected"): float64(timeouts + floodAttempts),
	}
	for s, w := range want {
		// Counters move after the device saw the close: wait for them.
		waitFor(t, s.String(), func() bool { return delta(s) >= w })
	}
	// A churner's next login may overtake the close of its previous
	// connection, which is then kicked rather than closed by the peer.
	waitFor(t, "churn disconnects", func() bool {
		return delta(disconnect("peer"))+delta(disconnect("kicked")) >= floodChurners*floodChurns
	})
	for _, s := range []series{disconnect("too_large"), disconnect("bad_frames"), disconnect("slow_reader"), disconnect("rate_limited")} {
		if got := delta(s); got != want[s] {
			t.Errorf("%s moved by %v, want %v: a good device was cut?", s, got, want[s])
		}
	}

	// The gateway stayed ready: one northbound session all along.
	if !h.gw.north.Connected() {
		t.Error("northbound not connected after the flood")
	}
	sim.View(func(v *iotdasim.View) {
		if n := v.Connects(testGW); n != 1 {
			t.Errorf("gateway connected %d times to the platform, want 1", n)
		}
	})
	// Attack connections are gone, and so are their goroutines.
	waitFor(t, "attack connections closed", func() bool { return h.gw.south.Count() == floodGood })
	checkNoLeak(t, baseGoroutines)

	// Every acked report reached the platform; no good device went
	// OFFLINE.
	stopReporters()
	for _, d := range good {
		acked, _, err := d.counts()
		if err != nil {
			t.Fatalf("good device: %v", err)
		}
		h.waitSim(d.node+" reports at the platform", func(v *iotdasim.View) bool { return v.PropertyCount(d.id) >= acked })
	}
	sim.View(func(v *iotdasim.View) {
		ids := map[string]bool{}
		for _, d := range good {
			ids[d.id] = true
		}
		for _, u := range v.StatusUpdates() {
			for _, s := range u.Statuses {
				if ids[s.DeviceID] && s.Status != iotda.StatusOnline {
					t.Errorf("good device %s reported %s", s.DeviceID, s.Status)
				}
			}
		}
	})
}

// churn connects, logs in and disconnects, over and over.
func churn(h *harness) error {
	var g errgroup.Group
	for i := range floodChurners {
		node := "churn" + strconv.Itoa(i)
		g.Go(func() error {
			for range floodChurns {
				ctx, cancel := context.WithTimeout(context.Background(), floodDeadline)
				c, err := dialDevice(ctx, h, node, "", floodSecret(node))
				if err == nil {
					_, err = c.Hello(ctx)
					c.Close()
				}
				cancel()
				if err != nil {
					return fmt.Errorf("churn %s: %w", node, err)
				}
			}
			return nil
		})
	}
	return g.Wait()
}

// oversize sends a frame above max_frame before any hello.
func oversize(h *harness) error {
	for range floodAttempts {
		ctx, cancel := context.WithTimeout(context.Background(), floodDeadline)
		c, err := dialDevice(ctx, h, "", "", nil)
		cancel()
		if err != nil {
			return err
		}
		// The gateway may close before the whole frame is written.
		_ = c.SendRaw([]byte(`{"type":"message","content":"` + strings.Repeat("x", floodMaxFrame+1024)))
		codes, err := errorCodes(c)
		c.Close()
		if err != nil {
			return fmt.Errorf("oversize: %w", err)
		}
		if err := wantCodes("oversize", codes, frame.CodeTooLarge); err != nil {
			return err
		}
	}
	return nil
}

// garbage sends lines of random bytes: each is a bad frame, and
// max_bad_frames of them in a row close the connection.
func garbage(h *harness) error {
	r := rand.New(rand.NewPCG(1, 2))
	for range floodAttempts {
		ctx, cancel := context.WithTimeout(context.Background(), floodDeadline)
		c, err := dialDevice(ctx, h, "", "", nil)
		cancel()
		if err != nil {
			return err
		}
		var b bytes.Buffer
		for range floodBadFrames {
			for range 200 {
				// Any byte but a line end; '{' first would still not parse.
				b.WriteByte(byte(r.IntN(256-11) + 11))
			}
			b.WriteByte('\n')
		}
		_ = c.SendRaw(b.Bytes())
		codes, err := errorCodes(c)
		c.Close()
		if err != nil {
			return fmt.Errorf("garbage: %w", err)
		}
		want := make([]frame.ErrorCode, floodBadFrames)
		for i := range want {
			want[i] = frame.CodeBadFrame
		}
		if err := wantCodes("garbage", codes, want...); err != nil {
			return err
		}
	}
	return nil
}

// slowDevice is a logged-in device that never reads again.
type slowDevice struct {
	nc net.Conn
	id string
}

// dialSlow logs node in over a raw socket with a tiny receive buffer.
func dialSlow(t *testing.T, h *harness, node string) *slowDevice {
	t.Helper()
	nc, err := net.Dial("tcp", h.addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	if err := nc.(*net.TCPConn).SetReadBuffer(4096); err != nil {
		t.Fatal(err)
	}
	codec := frame.JSONL()
	_ = nc.SetDeadline(time.Now().Add(floodDeadline))
	var buf []byte
	next := func() frame.Frame {
		t.Helper()
		tmp := make([]byte, 4096)
		for {
			f, n, err := codec.Decode(buf, false)
			if err == nil {
				f = f.Clone()
				buf = buf[n:]
				return f
			}
			if !errors.Is(err, frame.ErrIncomplete) {
				t.Fatalf("slow device: %v", err)
			}
			m, err := nc.Read(tmp)
			if err != nil {
				t.Fatalf("slow device: %v", err)
			}
			buf = append(buf, tmp[:m]...)
		}
	}
	ch := next()
	if ch.Type != frame.TypeChallenge {
		t.Fatalf("slow device: got %s, want a challenge", ch.Type)
	}
	hello, err := codec.AppendEncode(nil, frame.Frame{Type: frame.TypeHello, NodeID: node,
		Proof: frame.Proof(floodSecret(node), ch.Nonce, node)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Write(hello); err != nil {
		t.Fatal(err)
	}
	w := next()
	if w.Type != frame.TypeWelcome {
		t.Fatalf("slow device: got %s %s, want a welcome", w.Type, w.Code)
	}
	_ = nc.SetDeadline(time.Time{})
	return &slowDevice{nc: nc, id: w.DeviceID}
}

// slowReader has the platform send messages to the slow device, which
// does not read them, until the gateway cuts it off. The protocol has no
// error frame it could read: only the close and the metrics tell.
func slowReader(h *harness, d *slowDevice) error {
	const batch, maxBatches = 16, 64
	content := []byte(`"` + strings.Repeat("m", 8<<10) + `"`)
	handled := func() (float64, error) {
		return gatherSeries(h, "subgate_downlink_requests_total", "kind", "message")
	}
	want, err := handled()
	if err != nil {
		return err
	}
	for range maxBatches {
		if _, ok := h.gw.south.Lookup("slow0"); !ok {
			break
		}
		for range batch {
			if err := h.sim.SendMessage(testGW, d.id, content); err != nil {
				return fmt.Errorf("slow reader: %w", err)
			}
		}
		// Wait until the gateway handled the batch: metrics have no
		// change event, so poll, bounded.
		want += batch
		deadline := time.Now().Add(floodDeadline)
		for {
			n, err := handled()
			if err != nil {
				return err
			}
			if n >= want {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("slow reader: %v of %v messages handled", n, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if _, ok := h.gw.south.Lookup("slow0"); ok {
		return fmt.Errorf("slow reader: not cut off after %d messages", batch*maxBatches)
	}
	// The socket is closed on the gateway's side (the connection count
	// shows it); reading to its end would take the kernel's zero-window
	// probes, which back off to seconds, so the device just hangs up.
	return d.nc.Close()
}

// halfOpen opens more sockets from one address than max_conns_per_ip
// allows and sends nothing: the extra ones are refused at once
// (too_many_connections), the others time out waiting for the hello. It
// returns how many sockets got each error frame.
func halfOpen(h *harness) (map[frame.ErrorCode]int, error) {
	clients := make([]*southboundtest.Client, 0, floodHalfOpen)
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	// Every socket is open before any can time out (hello_timeout is 1s).
	for range floodHalfOpen {
		ctx, cancel := context.WithTimeout(context.Background(), floodDeadline)
		c, err := dialDevice(ctx, h, "", floodAttackerIP, nil)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("half-open: %w", err)
		}
		clients = append(clients, c)
	}
	var mu sync.Mutex
	codes := map[frame.ErrorCode]int{}
	var g errgroup.Group
	for _, c := range clients {
		g.Go(func() error {
			got, err := errorCodes(c)
			if err != nil {
				return fmt.Errorf("half-open: %w", err)
			}
			if len(got) != 1 || got[0] != frame.CodeTimeout && got[0] != frame.CodeTooManyConns {
				return fmt.Errorf("half-open: error frames %v, want timeout or too_many_connections", got)
			}
			mu.Lock()
			codes[got[0]]++
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	if codes[frame.CodeTooManyConns] == 0 {
		return nil, fmt.Errorf("half-open: %d sockets from one address, none refused", floodHalfOpen)
	}
	return codes, nil
}

// badAuth answers the challenge with a proof made with the wrong secret.
func badAuth(h *harness) error {
	for range floodAttempts {
		ctx, cancel := context.WithTimeout(context.Background(), floodDeadline)
		c, err := dialDevice(ctx, h, "bad0", "", []byte("not-the-secret"))
		if err != nil {
			cancel()
			return err
		}
		_, err = c.Hello(ctx)
		cancel()
		var fe *frame.Error
		if !errors.As(err, &fe) || fe.Code != frame.CodeAuthFailed {
			c.Close()
			return fmt.Errorf("bad proof: hello returned %v, want auth_failed", err)
		}
		_, err = errorCodes(c)
		c.Close()
		if err != nil {
			return fmt.Errorf("bad proof: %w", err)
		}
	}
	return nil
}

// spamRate sends reports far above rate_per_sec in one burst: those above
// the bucket are answered rate_limited, and rate_strikes of them in a row
// close the connection.
func spamRate(c *southboundtest.Client) error {
	report := frame.Frame{Type: frame.TypeProperties, Services: services("meter", map[string]any{"spam": 1})}
	codec := frame.JSONL()
	var b []byte
	for range 4 * floodRate {
		var err error
		if b, err = codec.AppendEncode(b, report); err != nil {
			return err
		}
	}
	_ = c.SendRaw(b)
	codes, err := errorCodes(c)
	if err != nil {
		return fmt.Errorf("spam: %w", err)
	}
	for _, code := range codes {
		if code != frame.CodeRateLimited {
			return fmt.Errorf("spam: error frames %v, want rate_limited only", codes)
		}
	}
	if len(codes) < floodRateStrike {
		return fmt.Errorf("spam: %d rate_limited frames, want %d", len(codes), floodRateStrike)
	}
	return nil
}
