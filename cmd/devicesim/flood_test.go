package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/subgate/subgate/southbound/frame"
)

// Bounds of limitGateway, small so that each attack is answered quickly.
const (
	fakeMaxFrame     = 64 << 10
	fakeHelloTimeout = 300 * time.Millisecond
	fakeWriteTimeout = 200 * time.Millisecond
	fakeMaxBad       = 5
)

// limitGateway is a stand-in for subgate's southbound limits: one
// goroutine per connection enforces the frame size, the hello timeout, bad
// frames in a row, the token proof and a write timeout (a device that does
// not read is cut), answering with the error frames of
// docs/device-protocol.md §7. It records why each connection ended.
type limitGateway struct {
	ln     net.Listener
	codec  frame.Codec
	secret []byte // token auth when not nil

	wg      sync.WaitGroup
	changed chan struct{}
	// mu guards the following fields.
	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	reasons map[string]int // why connections ended
	logins  int
	closed  bool
}

func newLimitGateway(t *testing.T, codec string, secret []byte) *limitGateway {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c, err := frame.New(codec, fakeMaxFrame)
	if err != nil {
		t.Fatal(err)
	}
	g := &limitGateway{ln: ln, codec: c, secret: secret, changed: make(chan struct{}, 1),
		conns: map[net.Conn]struct{}{}, reasons: map[string]int{}}
	g.wg.Go(g.accept)
	t.Cleanup(g.close)
	return g
}

func (g *limitGateway) addr() string { return g.ln.Addr().String() }

func (g *limitGateway) accept() {
	for {
		conn, err := g.ln.Accept()
		if err != nil {
			return
		}
		g.mu.Lock()
		if g.closed {
			g.mu.Unlock()
			conn.Close()
			return
		}
		g.conns[conn] = struct{}{}
		g.mu.Unlock()
		g.wg.Go(func() { g.serve(conn) })
	}
}

func (g *limitGateway) close() {
	g.ln.Close()
	g.mu.Lock()
	g.closed = true
	for c := range g.conns {
		c.Close()
	}
	g.mu.Unlock()
	g.wg.Wait()
}

func (g *limitGateway) note(f func()) {
	g.mu.Lock()
	f()
	g.mu.Unlock()
	select {
	case g.changed <- struct{}{}:
	default:
	}
}

// waitReason waits until n connections ended for reason.
func (g *limitGateway) waitReason(t *testing.T, reason string, n int) {
	t.Helper()
	deadline := time.NewTimer(testTimeout)
	defer deadline.Stop()
	for {
		g.mu.Lock()
		got, all := g.reasons[reason], fmtReasons(g.reasons)
		g.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-g.changed:
		case <-deadline.C:
			t.Fatalf("%d connections ended with %s, want %d; all: %s", got, reason, n, all)
		}
	}
}

func fmtReasons(m map[string]int) string {
	b, _ := json.Marshal(m)
	return string(b)
}

// serve runs one connection until it ends, and records why.
func (g *limitGateway) serve(conn net.Conn) {
	reason := "peer"
	defer func() {
		conn.Close()
		g.note(func() {
			delete(g.conns, conn)
			g.reasons[reason]++
		})
	}()
	// A small send buffer makes a device that does not read show at once.
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(4 << 10)
	}
	send := func(f frame.Frame) bool {
		b, err := g.codec.AppendEncode(nil, f)
		if err != nil {
			return false
		}
		_ = conn.SetWriteDeadline(time.Now().Add(fakeWriteTimeout))
		_, err = conn.Write(b)
		return err == nil
	}
	fail := func(r string, code frame.ErrorCode) {
		reason = r
		send(frame.Frame{Type: frame.TypeError, Code: code, Reason: r})
	}
	var nonce []byte
	if g.secret != nil {
		nonce = make([]byte, 16)
		_, _ = rand.Read(nonce)
		if !send(frame.Frame{Type: frame.TypeChallenge, Nonce: nonce}) {
			return
		}
	}
	helloBy := time.Now().Add(fakeHelloTimeout)
	var buf []byte
	tmp := make([]byte, 4<<10)
	loggedIn, bad := false, 0
	for {
		deadline := time.Time{}
		if !loggedIn {
			deadline = helloBy
		}
		_ = conn.SetReadDeadline(deadline)
		n, err := conn.Read(tmp)
		buf = append(buf, tmp[:n]...)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && !loggedIn {
				fail("hello_timeout", frame.CodeTimeout)
			}
			return
		}
		for len(buf) > 0 {
			f, used, err := g.codec.Decode(buf, false)
			if errors.Is(err, frame.ErrIncomplete) {
				if len(buf) > fakeMaxFrame+64 {
					fail("too_large", frame.CodeTooLarge)
					return
				}
				break
			}
			var fe *frame.Error
			if errors.As(err, &fe) {
				if fe.Fatal || used <= 0 {
					r := "bad_frames"
					if fe.Code == frame.CodeTooLarge {
						r = "too_large"
					}
					fail(r, fe.Code)
					return
				}
				buf = buf[used:]
				if bad++; bad >= fakeMaxBad {
					fail("bad_frames", fe.Code)
					return
				}
				send(frame.Frame{Type: frame.TypeError, Code: fe.Code, Reason: fe.Reason})
				continue
			}
			if err != nil {
				return
			}
			buf = buf[used:]
			bad = 0
			switch f.Type {
			case frame.TypeHello:
				if g.secret != nil && !frame.CheckProof(g.secret, nonce, f.NodeID, f.Proof) {
					fail("auth_failed", frame.CodeAuthFailed)
					return
				}
				loggedIn = true
				g.note(func() { g.logins++ })
				send(frame.Frame{Type: frame.TypeWelcome, DeviceID: "p_" + f.NodeID})
			case frame.TypePing:
				if !send(frame.Frame{Type: frame.TypePong, Seq: f.Seq}) {
					reason = "slow_reader"
					return
				}
			default:
				if !loggedIn {
					send(frame.Frame{Type: frame.TypeError, Code: frame.CodeNotLoggedIn, Seq: f.Seq})
				}
			}
		}
	}
}

// floodTestConfig is a device config for a flood of kind against addr.
func floodTestConfig(addr, codec string, kind floodKind, secret []byte) config {
	return config{
		Addr: addr, Codec: codec, N: 0, Prefix: "dev", Secret: secret,
		ConnectRate: 0, ConnectBurst: 1, MaxPending: 1, ConnectTimeout: 5 * time.Second,
		Window: 1, RecvQueue: 1, Duration: time.Minute,
		Flood: floodConfig{Kinds: []floodKind{kind}, N: 2, Rate: 1000, Duration: testTimeout,
			Size: 2 * fakeMaxFrame, Prefix: "fl-"},
	}
}

// TestFloodKinds runs each attack against limitGateway until it has seen
// the attack end the way the gateway's limits end it, and checks that the
// attackers counted the gateway's answers.
func TestFloodKinds(t *testing.T) {
	secret := []byte("flood-secret")
	cases := []struct {
		kind     floodKind
		codec    string
		reason   string            // why limitGateway ended the connections
		codes    []frame.ErrorCode // error frames the attackers must see (any of)
		welcomed bool              // logins succeed
		cut      bool              // the gateway, not the attacker, closes
	}{
		{floodChurn, frame.NameJSONL, "peer", nil, true, false},
		{floodOversize, frame.NameJSONL, "too_large", []frame.ErrorCode{frame.CodeTooLarge}, false, true},
		{floodOversize, frame.NameBinary, "too_large", []frame.ErrorCode{frame.CodeTooLarge}, false, true},
		// Random jsonl lines are bad frames; random binary breaks the
		// framing at once (bad magic, or in 1/256 cases a bad version).
		{floodGarbage, frame.NameJSONL, "bad_frames", []frame.ErrorCode{frame.CodeBadFrame, frame.CodeUnsupported}, false, true},
		{floodGarbage, frame.NameBinary, "bad_frames", []frame.ErrorCode{frame.CodeBadFrame, frame.CodeUnsupported}, false, true},
		{floodSlow, frame.NameBinary, "slow_reader", nil, true, true},
		{floodHalfOpen, frame.NameJSONL, "hello_timeout", []frame.ErrorCode{frame.CodeTimeout}, false, true},
		{floodBadAuth, frame.NameBinary, "auth_failed", []frame.ErrorCode{frame.CodeAuthFailed}, false, true},
	}
	for _, tc := range cases {
		t.Run(tc.kind.String()+"/"+tc.codec, func(t *testing.T) {
			g := newLimitGateway(t, tc.codec, secret)
			fl, err := newFlood(floodTestConfig(g.addr(), tc.codec, tc.kind, secret))
			if err != nil {
				t.Fatal(err)
			}
			const want = 3
			sums := floodUntil(t, fl, func(s FloodSummary) bool { return s.Cut+s.Closed >= want })
			g.waitReason(t, tc.reason, want)
			if len(sums) != 1 || sums[0].Kind != tc.kind.String() || sums[0].Attackers != 2 {
				t.Fatalf("summaries %+v", sums)
			}
			s := sums[0]
			t.Log(s.Line())
			if s.Attempts < want || s.DialFailed != 0 || s.BytesOut == 0 && tc.kind != floodHalfOpen {
				t.Errorf("attempts %d, dial failures %d, bytes out %d", s.Attempts, s.DialFailed, s.BytesOut)
			}
			if got := s.Welcomed >= want; got != tc.welcomed {
				t.Errorf("welcomed %d, want logins: %v", s.Welcomed, tc.welcomed)
			}
			if !tc.welcomed && s.Welcomed != 0 {
				t.Errorf("welcomed %d, want none", s.Welcomed)
			}
			if tc.cut && s.Cut < want {
				t.Errorf("cut %d, want >= %d", s.Cut, want)
			}
			if !tc.cut && (s.Cut != 0 || s.Closed < want) {
				t.Errorf("cut %d closed %d, want the attacker to close", s.Cut, s.Closed)
			}
			var seen int64
			for _, c := range tc.codes {
				seen += s.Errors[c.String()]
			}
			if len(tc.codes) > 0 && seen < want {
				t.Errorf("error frames %v, want >= %d of %v", s.Errors, want, tc.codes)
			}
			if len(tc.codes) == 0 && len(s.Errors) != 0 {
				t.Errorf("error frames %v, want none", s.Errors)
			}
		})
	}
}

// TestFloodWithoutSecret: churn and slow against a token gateway without
// a secret are refused (auth_failed), and badauth against a gateway that
// sends no challenge still signs something and is let in (open auth: the
// summary shows it was welcomed).
func TestFloodWithoutSecret(t *testing.T) {
	t.Run("churn refused", func(t *testing.T) {
		g := newLimitGateway(t, frame.NameJSONL, []byte("s"))
		fl, err := newFlood(floodTestConfig(g.addr(), frame.NameJSONL, floodChurn, nil))
		if err != nil {
			t.Fatal(err)
		}
		sums := floodUntil(t, fl, func(s FloodSummary) bool { return s.Cut >= 2 })
		g.waitReason(t, "auth_failed", 2)
		if s := sums[0]; s.Welcomed != 0 || s.Errors["auth_failed"] < 2 {
			t.Fatalf("summary %s", s.Line())
		}
	})
	t.Run("badauth open", func(t *testing.T) {
		g := newLimitGateway(t, frame.NameJSONL, nil)
		cfg := floodTestConfig(g.addr(), frame.NameJSONL, floodBadAuth, nil)
		// How long badauth waits for a challenge that an open gateway
		// never sends.
		cfg.ConnectTimeout = 100 * time.Millisecond
		fl, err := newFlood(cfg)
		if err != nil {
			t.Fatal(err)
		}
		sums := floodUntil(t, fl, func(s FloodSummary) bool { return s.Welcomed >= 2 })
		if s := sums[0]; s.Welcomed < 2 {
			t.Fatalf("summary %s", s.Line())
		}
	})
}

// floodUntil runs fl until done holds for the summary of its single
// kind, then ends the flood and returns the final summaries.
func floodUntil(t *testing.T, fl *flood, done func(FloodSummary) bool) []FloodSummary {
	t.Helper()
	ended := make(chan struct{}, 1)
	fl.after = func() {
		select {
		case ended <- struct{}{}:
		default:
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var sums []FloodSummary
	var wg sync.WaitGroup
	wg.Go(func() { sums = fl.run(ctx) })
	deadline := time.NewTimer(testTimeout)
	defer deadline.Stop()
	for !done(fl.summaries()[0]) {
		select {
		case <-ended:
		case <-deadline.C:
			cancel()
			wg.Wait()
			t.Fatalf("flood did not get there: %s", fl.summaries()[0].Line())
		}
	}
	cancel()
	wg.Wait()
	return sums
}

// TestFloodDialFailures: with nothing listening, attempts fail at dial and
// are counted, paced by -flood-rate, until the flood ends.
func TestFloodDialFailures(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := floodTestConfig(addr, frame.NameJSONL, floodGarbage, nil)
	cfg.Flood.Duration = 200 * time.Millisecond
	cfg.Flood.Rate = 20
	fl, err := newFlood(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := fl.run(t.Context())[0]
	// The burst (min(rate, attackers) = 2) plus at most rate * 200ms more;
	// the bound is loose since it only checks that pacing applies.
	// An attempt cut short by the end of the flood is not a failure.
	if s.Attempts < 1 || s.DialFailed < s.Attempts-2 || s.Attempts > 2+int64(20*0.2)+2 {
		t.Fatalf("summary %s", s.Line())
	}
}

func TestFloodFlags(t *testing.T) {
	good := []string{"-addr", "127.0.0.1:1", "-n", "0", "-flood", "churn,slow"}
	c, _, err := parseFlags(good, new(bytes.Buffer))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Flood.Kinds) != 2 || c.Flood.Kinds[0] != floodChurn || c.Flood.Kinds[1] != floodSlow || c.Flood.N != 10 {
		t.Fatalf("flood config %+v", c.Flood)
	}
	c, _, err = parseFlags([]string{"-flood", "all,churn", "-flood-src", "127.0.0.2-127.0.0.3"}, new(bytes.Buffer))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Flood.Kinds) != int(numFloodKinds) || len(c.Flood.Sources) != 2 {
		t.Fatalf("flood config %+v", c.Flood)
	}
	for _, bad := range [][]string{
		{"-n", "0"}, // no devices and no flood
		{"-flood", "nope"},
		{"-flood", ""},
		{"-flood", "churn", "-flood-n", "0"},
		{"-flood", "churn", "-flood-rate", "0"},
		{"-flood", "churn", "-flood-rate", "NaN"},
		{"-flood", "churn", "-flood-duration", "0s"},
		{"-flood", "churn", "-flood-size", "10"},
		{"-flood", "churn", "-flood-prefix", "bad prefix "},
		{"-flood", "churn", "-codec", "demo"},
		{"-flood", "churn", "-flood-src", "not-an-ip"},
	} {
		if _, _, err := parseFlags(bad, new(bytes.Buffer)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// TestMainFloodOnly: -n 0 runs only the attackers and prints their
// summary, as lines or as JSON.
func TestMainFloodOnly(t *testing.T) {
	g := newLimitGateway(t, frame.NameJSONL, nil)
	var stdout, stderr bytes.Buffer
	args := []string{"-addr", g.addr(), "-n", "0", "-flood", "halfopen,oversize", "-flood-n", "1",
		"-flood-duration", "800ms", "-flood-size", "200000", "-report", "0"}
	if code := run(t.Context(), args, &stdout, &stderr); code != exitOK {
		t.Fatalf("exit %d, stderr %s", code, stderr.String())
	}
	out := stdout.String()
	if !strings.Contains(out, "devicesim-flood: kind=halfopen attackers=1 ") ||
		!strings.Contains(out, "devicesim-flood: kind=oversize attackers=1 ") || strings.Contains(out, "connected=") {
		t.Fatalf("stdout %q", out)
	}
	if !strings.Contains(out, "err_too_large=") {
		t.Errorf("no too_large answer counted: %q", out)
	}

	stdout.Reset()
	args = append(args, "-json")
	if code := run(t.Context(), args, &stdout, &stderr); code != exitOK {
		t.Fatalf("exit %d, stderr %s", code, stderr.String())
	}
	var got struct{ Flood []FloodSummary }
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil || len(got.Flood) != 2 {
		t.Fatalf("stdout %q: %v", stdout.String(), err)
	}
}

// TestMainFloodWithDevices: attackers next to well-behaved devices; both
// summaries are printed.
func TestMainFloodWithDevices(t *testing.T) {
	g := newLimitGateway(t, frame.NameJSONL, nil)
	var stdout, stderr bytes.Buffer
	args := []string{"-addr", g.addr(), "-n", "3", "-hold", "0", "-report", "0", "-strict",
		"-flood", "garbage", "-flood-n", "1", "-flood-duration", "200ms"}
	if code := run(t.Context(), args, &stdout, &stderr); code != exitOK {
		t.Fatalf("exit %d, stderr %s", code, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "devicesim: connected=3/3 ") ||
		!strings.HasPrefix(lines[1], "devicesim-flood: kind=garbage ") {
		t.Fatalf("stdout %q", stdout.String())
	}
}
