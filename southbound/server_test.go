package southbound

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/subgate/subgate/southbound/frame"
	"github.com/subgate/subgate/southbound/southboundtest"
)

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

var report = frame.Frame{
	Type: frame.TypeProperties, Seq: 7,
	Services: json.RawMessage(`[{"service_id":"s","properties":{"t":21.5}}]`),
}

func TestLoginFramesLogout(t *testing.T) {
	for _, codec := range []string{"jsonl", "binary"} {
		t.Run(codec, func(t *testing.T) {
			hs := startServer(t, Config{Codec: codec}, nil, nil)
			c := hs.login(t, "node1")
			in := hs.h.expect(t, "login")
			if in.f.NodeID != "node1" || in.c.NodeID() != "node1" || in.c.DeviceID() != "dev-node1" {
				t.Fatalf("login frame %+v, conn node %q device %q", in.f, in.c.NodeID(), in.c.DeviceID())
			}
			if !in.c.Native() || in.c.Remote() == "" || in.c.ConnectedAt().IsZero() || in.c.ID() == 0 {
				t.Fatalf("conn accessors: native %v remote %q at %v id %d", in.c.Native(), in.c.Remote(), in.c.ConnectedAt(), in.c.ID())
			}
			if got, ok := hs.s.Lookup("node1"); !ok || got != in.c {
				t.Fatalf("Lookup = %v, %v", got, ok)
			}
			if hs.s.Sessions() != 1 || hs.s.Count() != 1 {
				t.Fatalf("sessions %d count %d, want 1 1", hs.s.Sessions(), hs.s.Count())
			}

			for i := range 3 {
				f := report
				f.Seq = uint32(i + 1)
				if err := c.Send(f); err != nil {
					t.Fatal(err)
				}
			}
			for i := range 3 {
				e := hs.h.expect(t, "frame")
				if e.f.Type != frame.TypeProperties || e.f.Seq != uint32(i+1) || string(e.f.Services) != string(report.Services) {
					t.Fatalf("frame %d: %+v", i, e.f)
				}
			}
			// Ping is answered by the server and not passed on.
			if err := c.Send(frame.Frame{Type: frame.TypePing, Seq: 99}); err != nil {
				t.Fatal(err)
			}
			if f := recv(t, c); f.Type != frame.TypePong || f.Seq != 99 {
				t.Fatalf("got %v seq %d, want pong 99", f.Type, f.Seq)
			}
			// Downlink from the handler side.
			if err := in.c.Send(frame.Frame{Type: frame.TypeCommand, RequestID: "r1", ServiceID: "s", CommandName: "go",
				Paras: json.RawMessage(`{"a":1}`)}); err != nil {
				t.Fatal(err)
			}
			if f := recv(t, c); f.Type != frame.TypeCommand || f.RequestID != "r1" {
				t.Fatalf("got %+v, want the command", f)
			}

			_ = c.Close()
			out := hs.h.expect(t, "logout")
			if out.c != in.c || !errors.Is(out.reason, ErrPeerClosed) {
				t.Fatalf("logout %v reason %v", out.c == in.c, out.reason)
			}
			hs.h.none(t)
			if _, ok := hs.s.Lookup("node1"); ok {
				t.Fatal("Lookup after logout found the connection")
			}
			eventually(t, "count back to 0", func() bool { return hs.s.Count() == 0 && hs.s.Sessions() == 0 })
			if got := counter(hs.s.m.disconnects[rPeer]); got != 1 {
				t.Fatalf("disconnects{peer} = %v", got)
			}
			if got := counter(hs.s.m.framesIn[frame.TypeProperties]); got != 3 {
				t.Fatalf("frames_in{properties} = %v", got)
			}
			if got := counter(hs.s.m.accepts); got != 1 {
				t.Fatalf("accepts = %v", got)
			}
			if err := in.c.Send(report); !errors.Is(err, ErrClosed) {
				t.Fatalf("Send after close: %v, want ErrClosed", err)
			}
		})
	}
}

func TestFramesBeforeHello(t *testing.T) {
	hs := startServer(t, Config{Codec: "jsonl", MaxBadFrames: 3}, nil, nil)
	c := hs.dial(t, southboundtest.Options{NodeID: "n"})
	if err := c.Send(report); err != nil {
		t.Fatal(err)
	}
	if f := recvError(t, c, frame.CodeNotLoggedIn); f.Seq != report.Seq {
		t.Fatalf("error seq %d, want %d", f.Seq, report.Seq)
	}
	// A down-only type from a device is refused too.
	if err := c.Send(frame.Frame{Type: frame.TypeAck, Seq: 3}); err != nil {
		t.Fatal(err)
	}
	recvError(t, c, frame.CodeUnsupported)
	if err := c.Send(report); err != nil {
		t.Fatal(err)
	}
	recvError(t, c, frame.CodeNotLoggedIn)
	recvEOF(t, c)
	hs.h.none(t)
	eventually(t, "bad_frames disconnect", func() bool { return counter(hs.s.m.disconnects[rBadFrames]) == 1 })
}

func TestHandlerRefusesLogin(t *testing.T) {
	h := newFakeHandler()
	h.login = func(c *Conn, f frame.Frame) error {
		return &frame.Error{Code: frame.CodeUnknownDevice, Reason: "who are you"}
	}
	hs := startServer(t, Config{Codec: "jsonl"}, h, nil)
	c := hs.dial(t, southboundtest.Options{NodeID: "stranger"})
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	_, err := c.Hello(ctx)
	var fe *frame.Error
	if !errors.As(err, &fe) || fe.Code != frame.CodeUnknownDevice || fe.Reason != "who are you" {
		t.Fatalf("hello: %v, want unknown_device", err)
	}
	recvEOF(t, c)
	h.none(t)
	eventually(t, "rejects{refused}", func() bool {
		return counter(hs.s.m.rejects[rjRefused]) == 1 && counter(hs.s.m.disconnects[rRejected]) == 1
	})
	if _, ok := hs.s.Lookup("stranger"); ok {
		t.Fatal("refused node id still in the session table")
	}
	hs.s.smu.Lock()
	n := len(hs.s.sessions)
	hs.s.smu.Unlock()
	if n != 0 {
		t.Fatalf("session table holds %d entries", n)
	}
}

func TestDemo(t *testing.T) {
	h := newFakeHandler()
	h.login = func(c *Conn, f frame.Frame) error {
		if f.NodeID == "prod_bad" {
			return &frame.Error{Code: frame.CodeUnknownDevice, Reason: "unknown device"}
		}
		c.SetDeviceID(f.NodeID)
		return nil
	}
	h.onFrame = func(c *Conn, f frame.Frame) {
		_ = c.Send(frame.Frame{Type: frame.TypeMessage, Content: []byte("got " + string(f.Content))})
	}
	hs := startServer(t, Config{Codec: "demo", MaxBadFrames: 2}, h, nil)

	t.Run("login", func(t *testing.T) {
		c := hs.dial(t, southboundtest.Options{NodeID: "prod_node1"})
		// One message per write, no delimiter: the Huawei demo device.
		if err := c.Send(frame.Frame{Type: frame.TypeMessage, Content: []byte("hello")}); err != nil {
			t.Fatal(err)
		}
		in := h.expect(t, "login")
		if in.f.NodeID != "prod_node1" || string(in.f.Content) != "hello" || in.c.Native() {
			t.Fatalf("login %+v", in.f)
		}
		if e := h.expect(t, "frame"); string(e.f.Content) != "hello" || e.c != in.c {
			t.Fatalf("first frame %q", e.f.Content)
		}
		if f := recv(t, c); string(f.Content) != "got hello" {
			t.Fatalf("reply %q", f.Content)
		}
		if err := c.Send(frame.Frame{Type: frame.TypeMessage, Content: []byte("second")}); err != nil {
			t.Fatal(err)
		}
		if e := h.expect(t, "frame"); string(e.f.Content) != "second" {
			t.Fatalf("frame %q", e.f.Content)
		}
		if f := recv(t, c); string(f.Content) != "got second" {
			t.Fatalf("reply %q", f.Content)
		}
		_ = c.Close()
		if e := h.expect(t, "logout"); e.c != in.c || !errors.Is(e.reason, ErrPeerClosed) {
			t.Fatalf("logout reason %v", e.reason)
		}
	})

	t.Run("refused", func(t *testing.T) {
		c := hs.dial(t, southboundtest.Options{NodeID: "prod_bad", DemoNewline: true})
		if err := c.Send(frame.Frame{Type: frame.TypeMessage, Content: []byte("x")}); err != nil {
			t.Fatal(err)
		}
		if f := recv(t, c); string(f.Content) != "error: unknown device" {
			t.Fatalf("reply %q", f.Content)
		}
		// Still open: a second refusal reaches MaxBadFrames and closes.
		if err := c.Send(frame.Frame{Type: frame.TypeMessage, Content: []byte("y")}); err != nil {
			t.Fatal(err)
		}
		recvEOF(t, c)
		h.none(t)
	})

	t.Run("garbage", func(t *testing.T) {
		c := hs.dial(t, southboundtest.Options{NodeID: "prod_node2"})
		if err := c.SendRaw([]byte("no separator here\n")); err != nil {
			t.Fatal(err)
		}
		f := recv(t, c)
		if !strings.HasPrefix(string(f.Content), "error: ") {
			t.Fatalf("reply %q, want an error line", f.Content)
		}
		h.none(t)
	})
}

func TestTokenAuth(t *testing.T) {
	secret := []byte("s3cr3t-value-for-node7")
	hs := startServer(t, Config{Codec: "jsonl", Auth: AuthToken}, nil, secretMap{"node7": secret})
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()

	good := hs.dial(t, southboundtest.Options{NodeID: "node7", Secret: secret})
	if w, err := good.Hello(ctx); err != nil || w.DeviceID != "dev-node7" {
		t.Fatalf("hello with the right secret: %+v, %v", w, err)
	}
	if in := hs.h.expect(t, "login"); in.c.nonce != nil {
		t.Fatal("the challenge nonce outlives the login")
	}

	// Wrong secret, and a node id without a secret.
	for _, o := range []southboundtest.Options{
		{NodeID: "node7", Secret: []byte("wrong")},
		{NodeID: "ghost", Secret: []byte("whatever")},
	} {
		c := hs.dial(t, o)
		_, err := c.Hello(ctx)
		var fe *frame.Error
		if !errors.As(err, &fe) || fe.Code != frame.CodeAuthFailed {
			t.Fatalf("hello as %s: %v, want auth_failed", o.NodeID, err)
		}
		recvEOF(t, c)
	}
	// No proof at all.
	c := hs.dial(t, southboundtest.Options{NodeID: "node7"})
	if f := recv(t, c); f.Type != frame.TypeChallenge || len(f.Nonce) != 16 {
		t.Fatalf("first frame %v with %d-byte nonce, want a 16-byte challenge", f.Type, len(f.Nonce))
	}
	if err := c.Send(frame.Frame{Type: frame.TypeHello, NodeID: "node7"}); err != nil {
		t.Fatal(err)
	}
	recvError(t, c, frame.CodeAuthFailed)
	recvEOF(t, c)
	hs.h.none(t)
	eventually(t, "rejects{auth_failed}", func() bool { return counter(hs.s.m.rejects[rjAuthFailed]) == 3 })

	// Neither the secret nor any proof reaches the log.
	good.Close()
	hs.h.expect(t, "logout")
	hs.stop()
	logs := hs.logs.String()
	if !strings.Contains(logs, "login refused") {
		t.Fatalf("refusals not logged:\n%s", logs)
	}
	for _, s := range [][]byte{secret, []byte("wrong"), []byte("whatever")} {
		if strings.Contains(logs, string(s)) {
			t.Fatalf("log contains secret %q", s)
		}
	}
	if strings.Contains(logs, "proof") {
		t.Fatalf("log mentions a proof:\n%s", logs)
	}
}

func TestTokenProofNotLogged(t *testing.T) {
	// A proof is a hex string; check that none of the proofs sent shows up.
	secret := []byte("k")
	hs := startServer(t, Config{Codec: "jsonl", Auth: AuthToken}, nil, secretMap{"n1": secret})
	c := hs.dial(t, southboundtest.Options{NodeID: "n1"})
	ch := recv(t, c)
	bad := frame.Proof([]byte("not-k"), ch.Nonce, "n1")
	if err := c.Send(frame.Frame{Type: frame.TypeHello, NodeID: "n1", Proof: bad}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(hs.logs.String())
		}
	})
	recvError(t, c, frame.CodeAuthFailed)
	recvEOF(t, c)
	hs.stop()
	if logs := hs.logs.String(); strings.Contains(logs, bad) || strings.Contains(logs, frame.Proof(secret, ch.Nonce, "n1")) {
		t.Fatalf("log contains a proof:\n%s", logs)
	}
}

func TestAllowList(t *testing.T) {
	hs := startServer(t, Config{Codec: "jsonl", AllowList: []string{"ok1"}}, nil, nil)
	hs.login(t, "ok1")
	hs.h.expect(t, "login")
	c := hs.dial(t, southboundtest.Options{NodeID: "nope"})
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	_, err := c.Hello(ctx)
	var fe *frame.Error
	if !errors.As(err, &fe) || fe.Code != frame.CodeAuthFailed {
		t.Fatalf("hello: %v, want auth_failed", err)
	}
	recvEOF(t, c)
	eventually(t, "rejects{not_allowed}", func() bool { return counter(hs.s.m.rejects[rjNotAllowed]) == 1 })
	hs.h.none(t)
}

func TestBadNodeID(t *testing.T) {
	hs := startServer(t, Config{Codec: "jsonl"}, nil, nil)
	c := hs.dial(t, southboundtest.Options{NodeID: "has space"})
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	_, err := c.Hello(ctx)
	var fe *frame.Error
	if !errors.As(err, &fe) || fe.Code != frame.CodeBadFrame {
		t.Fatalf("hello: %v, want bad_frame", err)
	}
	eventually(t, "rejects{bad_hello}", func() bool { return counter(hs.s.m.rejects[rjBadHello]) == 1 })
}

func TestSecondLogin(t *testing.T) {
	t.Run("kick-old", func(t *testing.T) {
		hs := startServer(t, Config{Codec: "jsonl"}, nil, nil)
		old := hs.login(t, "twin")
		first := hs.h.expect(t, "login")
		fresh := hs.login(t, "twin")
		// The old session ends before the new one is logged in.
		out := hs.h.expect(t, "logout")
		if out.c != first.c || !errors.Is(out.reason, ErrKicked) {
			t.Fatalf("logout of the old conn: same %v reason %v", out.c == first.c, out.reason)
		}
		second := hs.h.expect(t, "login")
		if second.c == first.c {
			t.Fatal("second login on the old connection")
		}
		recvError(t, old, frame.CodeKicked)
		recvEOF(t, old)
		if got, ok := hs.s.Lookup("twin"); !ok || got != second.c {
			t.Fatal("Lookup does not return the new connection")
		}
		// The old connection's close does not log the new one out.
		eventually(t, "old conn closed", func() bool { return hs.s.Count() == 1 })
		hs.h.none(t)
		if err := fresh.Send(report); err != nil {
			t.Fatal(err)
		}
		if e := hs.h.expect(t, "frame"); e.c != second.c {
			t.Fatal("frame on the wrong connection")
		}
		if hs.s.Sessions() != 1 {
			t.Fatalf("sessions %d, want 1", hs.s.Sessions())
		}
	})
	t.Run("reject-new", func(t *testing.T) {
		hs := startServer(t, Config{Codec: "jsonl", SecondLogin: RejectNew}, nil, nil)
		hs.login(t, "twin")
		first := hs.h.expect(t, "login")
		c := hs.dial(t, southboundtest.Options{NodeID: "twin"})
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		_, err := c.Hello(ctx)
		var fe *frame.Error
		if !errors.As(err, &fe) || fe.Code != frame.CodeDuplicate {
			t.Fatalf("hello: %v, want duplicate", err)
		}
		recvEOF(t, c)
		hs.h.none(t)
		if got, ok := hs.s.Lookup("twin"); !ok || got != first.c {
			t.Fatal("the first connection lost its session")
		}
		eventually(t, "rejects{duplicate}", func() bool { return counter(hs.s.m.rejects[rjDuplicate]) == 1 })
	})
}

func TestKick(t *testing.T) {
	hs := startServer(t, Config{Codec: "jsonl"}, nil, nil)
	c := hs.login(t, "k1")
	hs.h.expect(t, "login")
	if hs.s.Kick("nobody", frame.CodeDeleted, "gone") {
		t.Fatal("Kick of an unknown node id reported true")
	}
	if !hs.s.Kick("k1", frame.CodeDeleted, "deleted on the platform") {
		t.Fatal("Kick reported false")
	}
	if f := recvError(t, c, frame.CodeDeleted); f.Reason != "deleted on the platform" {
		t.Fatalf("reason %q", f.Reason)
	}
	recvEOF(t, c)
	if e := hs.h.expect(t, "logout"); !errors.Is(e.reason, ErrKicked) {
		t.Fatalf("logout reason %v", e.reason)
	}
}

func TestHelloTimeout(t *testing.T) {
	hs := startServer(t, Config{Codec: "jsonl", HelloTimeout: 50 * time.Millisecond}, nil, nil)
	c := hs.dial(t, southboundtest.Options{NodeID: "slow"})
	recvError(t, c, frame.CodeTimeout)
	recvEOF(t, c)
	eventually(t, "hello_timeout counted", func() bool {
		return counter(hs.s.m.rejects[rjHelloTimeout]) == 1 && counter(hs.s.m.limitHits[lHelloTimeout]) == 1
	})
	hs.h.none(t)
}

func TestIdleTimeout(t *testing.T) {
	hs := startServer(t, Config{Codec: "jsonl", IdleTimeout: 200 * time.Millisecond}, nil, nil)
	c := hs.dial(t, southboundtest.Options{NodeID: "quiet", ManualPong: true})
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if _, err := c.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	hs.h.expect(t, "login")
	// A ping first (at IdleTimeout/2), left unanswered; then the close.
	if f := recv(t, c); f.Type != frame.TypePing {
		t.Fatalf("got %v, want ping", f.Type)
	}
	recvError(t, c, frame.CodeTimeout)
	recvEOF(t, c)
	if e := hs.h.expect(t, "logout"); !errors.Is(e.reason, ErrIdle) {
		t.Fatalf("logout reason %v", e.reason)
	}
	if got := counter(hs.s.m.limitHits[lIdleTimeout]); got != 1 {
		t.Fatalf("limit_hits{idle_timeout} = %v", got)
	}
}

func TestIdlePongKeepsAlive(t *testing.T) {
	// Driven by the sweep with an injected clock: no waiting on time.
	h := newFakeHandler()
	s, err := New(Config{Listen: "127.0.0.1:0", Codec: "jsonl", IdleTimeout: time.Hour, HelloTimeout: time.Hour}, h, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var now atomicTime
	now.set(time.Unix(1000, 0))
	s.now = now.get
	hs := runServer(t, s, h, nil, &syncBuffer{})
	c := hs.dial(t, southboundtest.Options{NodeID: "p", ManualPong: true})
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if _, err := c.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	h.expect(t, "login")
	now.add(31 * time.Minute)
	s.sweep(now.get().UnixNano())
	if f := recv(t, c); f.Type != frame.TypePing {
		t.Fatalf("got %v, want ping", f.Type)
	}
	// The same idle spell is pinged once.
	s.sweep(now.get().UnixNano())
	if err := c.Send(frame.Frame{Type: frame.TypePong}); err != nil {
		t.Fatal(err)
	}
	// The pong is traffic: the device is no longer idle.
	if err := c.Send(frame.Frame{Type: frame.TypePing, Seq: 1}); err != nil {
		t.Fatal(err)
	}
	if f := recv(t, c); f.Type != frame.TypePong {
		t.Fatalf("got %v, want pong (a second ping means the first sweep pinged twice)", f.Type)
	}
	now.add(45 * time.Minute)
	s.sweep(now.get().UnixNano())
	if f := recv(t, c); f.Type != frame.TypePing {
		t.Fatalf("got %v, want ping", f.Type)
	}
	now.add(time.Hour)
	s.sweep(now.get().UnixNano())
	recvError(t, c, frame.CodeTimeout)
	recvEOF(t, c)
	if e := h.expect(t, "logout"); !errors.Is(e.reason, ErrIdle) {
		t.Fatalf("logout reason %v", e.reason)
	}
}

func TestMaxConns(t *testing.T) {
	hs := startServer(t, Config{Codec: "jsonl", MaxConns: 2}, nil, nil)
	hs.login(t, "a")
	hs.login(t, "b")
	c := hs.dial(t, southboundtest.Options{NodeID: "c"})
	recvError(t, c, frame.CodeTooManyConns)
	recvEOF(t, c)
	eventually(t, "max_conns counted", func() bool {
		return counter(hs.s.m.rejects[rjMaxConns]) == 1 && counter(hs.s.m.limitHits[lMaxConns]) == 1
	})
	if hs.s.Count() != 2 {
		t.Fatalf("count %d, want 2", hs.s.Count())
	}
}

func TestMaxConnsPerIP(t *testing.T) {
	hs := startServer(t, Config{Codec: "jsonl", MaxConnsPerIP: 1}, nil, nil)
	hs.login(t, "a")
	c := hs.dial(t, southboundtest.Options{NodeID: "b", LocalAddr: "127.0.0.1"})
	recvError(t, c, frame.CodeTooManyConns)
	recvEOF(t, c)
	// Another source address still gets in.
	other := hs.dial(t, southboundtest.Options{NodeID: "c", LocalAddr: "127.0.0.2"})
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if _, err := other.Hello(ctx); err != nil {
		t.Fatalf("hello from 127.0.0.2: %v", err)
	}
	eventually(t, "max_conns_per_ip counted", func() bool {
		return counter(hs.s.m.rejects[rjMaxConnsPerIP]) == 1 && counter(hs.s.m.limitHits[lMaxConnsPerIP]) == 1
	})
	// A closed connection gives its slot back.
	hs.s.ipMu.Lock()
	n := hs.s.perIP["127.0.0.2"]
	hs.s.ipMu.Unlock()
	if n != 1 {
		t.Fatalf("perIP[127.0.0.2] = %d", n)
	}
	_ = other.Close()
	eventually(t, "slot released", func() bool {
		hs.s.ipMu.Lock()
		defer hs.s.ipMu.Unlock()
		_, ok := hs.s.perIP["127.0.0.2"]
		return !ok
	})
}

func TestOversizeFrame(t *testing.T) {
	for _, codec := range []string{"jsonl", "binary"} {
		t.Run(codec, func(t *testing.T) {
			hs := startServer(t, Config{Codec: codec, MaxFrame: 1024}, nil, nil)
			c := hs.login(t, "big")
			in := hs.h.expect(t, "login")
			var raw []byte
			if codec == "jsonl" {
				raw = []byte(`{"type":"message","content":"` + strings.Repeat("x", 4000))
			} else {
				// A header declaring a body above the limit is refused at once.
				enc, err := frame.NewBinary(1<<20).AppendEncode(nil, frame.Frame{Type: frame.TypeMessage,
					Content: make([]byte, 4000)})
				if err != nil {
					t.Fatal(err)
				}
				raw = enc[:frame.MaxHeaderLen]
			}
			if err := c.SendRaw(raw); err != nil {
				t.Fatal(err)
			}
			recvError(t, c, frame.CodeTooLarge)
			recvEOF(t, c)
			if e := hs.h.expect(t, "logout"); e.c != in.c || !errors.Is(e.reason, ErrTooLarge) {
				t.Fatalf("logout reason %v", e.reason)
			}
			if got := counter(hs.s.m.disconnects[rTooLarge]); got != 1 {
				t.Fatalf("disconnects{too_large} = %v", got)
			}
			if got := counter(hs.s.m.limitHits[lMaxFrame]); got != 1 {
				t.Fatalf("limit_hits{max_frame} = %v", got)
			}
		})
	}
}

func TestGarbage(t *testing.T) {
	t.Run("jsonl", func(t *testing.T) {
		hs := startServer(t, Config{Codec: "jsonl", MaxBadFrames: 3}, nil, nil)
		c := hs.login(t, "g")
		hs.h.expect(t, "login")
		if err := c.SendRaw([]byte("this is not json\n")); err != nil {
			t.Fatal(err)
		}
		recvError(t, c, frame.CodeBadFrame)
		// A good frame resets the count of bad ones.
		if err := c.Send(report); err != nil {
			t.Fatal(err)
		}
		hs.h.expect(t, "frame")
		if err := c.SendRaw([]byte("{\"type\":\"nope\"}\n\x00\x01\x02\n[]\n")); err != nil {
			t.Fatal(err)
		}
		recvEOF(t, c)
		if e := hs.h.expect(t, "logout"); !errors.Is(e.reason, ErrBadFrames) {
			t.Fatalf("logout reason %v", e.reason)
		}
		got := counter(hs.s.m.decodeErrors[frame.CodeBadFrame]) + counter(hs.s.m.decodeErrors[frame.CodeUnsupported])
		if got != 4 {
			t.Fatalf("decode_errors{bad_frame,unsupported} = %v, want 4", got)
		}
	})
	t.Run("binary", func(t *testing.T) {
		hs := startServer(t, Config{Codec: "binary"}, nil, nil)
		c := hs.login(t, "g")
		hs.h.expect(t, "login")
		// A wrong magic byte loses the framing: error frame, then close.
		if err := c.SendRaw([]byte("GET / HTTP/1.1\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		recvError(t, c, frame.CodeBadFrame)
		recvEOF(t, c)
		if e := hs.h.expect(t, "logout"); !errors.Is(e.reason, ErrBadFrames) {
			t.Fatalf("logout reason %v", e.reason)
		}
	})
}

func TestSlowReader(t *testing.T) {
	sent := make(chan error, 1)
	h := newFakeHandler()
	h.onFrame = func(c *Conn, f frame.Frame) {
		big := frame.Frame{Type: frame.TypeMessage, Content: []byte(strings.Repeat("z", 16<<10))}
		for {
			if err := c.Send(big); err != nil {
				sent <- err
				return
			}
		}
	}
	hs := startServer(t, Config{Codec: "jsonl", MaxFrame: 32 << 10, MaxOutbound: 64 << 10}, h, nil)

	// A raw device that logs in and then never reads again.
	nc, err := net.Dial("tcp", hs.s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := nc.(*net.TCPConn).SetReadBuffer(4096); err != nil {
		t.Fatal(err)
	}
	codec := frame.JSONL()
	hello, _ := codec.AppendEncode(nil, frame.Frame{Type: frame.TypeHello, NodeID: "sloth"})
	msg, _ := codec.AppendEncode(nil, report)
	if _, err := nc.Write(append(hello, msg...)); err != nil {
		t.Fatal(err)
	}
	in := h.expect(t, "login")
	h.expect(t, "frame")
	select {
	case err := <-sent:
		if !errors.Is(err, ErrSlowReader) && !errors.Is(err, ErrClosed) {
			t.Fatalf("Send: %v, want ErrSlowReader or ErrClosed", err)
		}
	case <-time.After(wait):
		t.Fatal("Send never failed")
	}
	e := h.expect(t, "logout")
	if e.c != in.c || !errors.Is(e.reason, ErrSlowReaderClosed) {
		t.Fatalf("logout reason %v", e.reason)
	}
	if got := counter(hs.s.m.disconnects[rSlowReader]); got != 1 {
		t.Fatalf("disconnects{slow_reader} = %v", got)
	}
	if got := counter(hs.s.m.limitHits[lOutbound]); got < 1 {
		t.Fatalf("limit_hits{outbound} = %v", got)
	}
}

func TestRateLimit(t *testing.T) {
	h := newFakeHandler()
	s, err := New(Config{Listen: "127.0.0.1:0", Codec: "jsonl", RatePerSec: 1, RateBurst: 3, RateStrikes: 3},
		h, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var now atomicTime
	now.set(time.Unix(1000, 0))
	s.now = now.get // frozen: no token comes back unless the test moves time
	hs := runServer(t, s, h, nil, &syncBuffer{})
	c := hs.dial(t, southboundtest.Options{NodeID: "chatty"})
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if _, err := c.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	h.expect(t, "login")
	send := func(seq uint32) {
		t.Helper()
		f := report
		f.Seq = seq
		if err := c.Send(f); err != nil {
			t.Fatal(err)
		}
	}
	for seq := uint32(1); seq <= 3; seq++ {
		send(seq)
		if e := h.expect(t, "frame"); e.f.Seq != seq {
			t.Fatalf("frame seq %d, want %d", e.f.Seq, seq)
		}
	}
	send(4)
	if f := recvError(t, c, frame.CodeRateLimited); f.Seq != 4 {
		t.Fatalf("rate_limited seq %d, want 4", f.Seq)
	}
	// Two seconds give two tokens back.
	now.add(2 * time.Second)
	send(5)
	send(6)
	h.expect(t, "frame")
	h.expect(t, "frame")
	// Persistent abuse: RateStrikes limited frames in a row close.
	send(7)
	send(8)
	send(9)
	recvError(t, c, frame.CodeRateLimited)
	recvError(t, c, frame.CodeRateLimited)
	recvError(t, c, frame.CodeRateLimited)
	recvEOF(t, c)
	if e := h.expect(t, "logout"); !errors.Is(e.reason, ErrRateLimited) {
		t.Fatalf("logout reason %v", e.reason)
	}
	if got := counter(s.m.limitHits[lRate]); got != 4 {
		t.Fatalf("limit_hits{rate} = %v, want 4", got)
	}
}

func TestWorkerQueueFull(t *testing.T) {
	release := make(chan struct{})
	h := newFakeHandler()
	h.onFrame = func(c *Conn, f frame.Frame) {
		if f.Seq == 1 {
			<-release
		}
	}
	hs := startServer(t, Config{Codec: "jsonl", Workers: 1, WorkerQueue: 2}, h, nil)
	c := hs.login(t, "busy")
	h.expect(t, "login")
	f := report
	f.Seq = 1
	if err := c.Send(f); err != nil {
		t.Fatal(err)
	}
	h.expect(t, "frame") // the worker is now blocked in seq 1
	for seq := uint32(2); seq <= 5; seq++ {
		f.Seq = seq
		if err := c.Send(f); err != nil {
			t.Fatal(err)
		}
	}
	// Seq 2 and 3 fill the queue; 4 and 5 are refused with busy.
	if e := recvError(t, c, frame.CodeBusy); e.Seq != 4 {
		t.Fatalf("busy seq %d, want 4", e.Seq)
	}
	if e := recvError(t, c, frame.CodeBusy); e.Seq != 5 {
		t.Fatalf("busy seq %d, want 5", e.Seq)
	}
	if got := counter(hs.s.m.limitHits[lWorkerQueue]); got != 2 {
		t.Fatalf("limit_hits{worker_queue} = %v", got)
	}
	if got := counter(hs.s.m.queueDepth); got != 2 {
		t.Fatalf("worker_queue_depth = %v, want 2", got)
	}
	close(release)
	for _, want := range []uint32{2, 3} {
		if e := h.expect(t, "frame"); e.f.Seq != want {
			t.Fatalf("frame seq %d, want %d", e.f.Seq, want)
		}
	}
}

func TestSendThen(t *testing.T) {
	hs := startServer(t, Config{Codec: "jsonl"}, nil, nil)
	c := hs.login(t, "st")
	in := hs.h.expect(t, "login")
	done := make(chan error, 1)
	if err := in.c.SendThen(frame.Frame{Type: frame.TypeAck, Seq: 5}, func(err error) { done <- err }); err != nil {
		t.Fatal(err)
	}
	if err := waitErr(t, done, "SendThen callback"); err != nil {
		t.Fatalf("done(%v)", err)
	}
	if f := recv(t, c); f.Type != frame.TypeAck || f.Seq != 5 {
		t.Fatalf("got %v %d", f.Type, f.Seq)
	}
	mu := in.c.ilock()
	mu.Lock()
	left := in.c.pending
	mu.Unlock()
	if left != nil {
		t.Fatalf("%d callbacks still waiting, or an empty table kept, after the last one ran", len(left))
	}
	if err := in.c.SendThen(frame.Frame{Type: frame.TypeOTAChunk}, func(error) { t.Error("done called for a failed send") }); err == nil {
		t.Fatal("SendThen of an invalid frame succeeded")
	}
	_ = c.Close()
	hs.h.expect(t, "logout")
	if err := in.c.SendThen(report, func(error) {}); !errors.Is(err, ErrClosed) {
		t.Fatalf("SendThen after close: %v", err)
	}
}

func TestShutdown(t *testing.T) {
	hs := startServer(t, Config{Codec: "jsonl"}, nil, nil)
	var clients []*southboundtest.Client
	for _, n := range []string{"s1", "s2", "s3"} {
		clients = append(clients, hs.login(t, n))
		hs.h.expect(t, "login")
	}
	idle := hs.dial(t, southboundtest.Options{NodeID: "never"}) // not logged in
	// gnet registers an accepted socket on a loop asynchronously; one that
	// is still in flight when the loops stop is never opened.
	eventually(t, "idle conn open", func() bool { return hs.s.Count() == 4 })
	hs.stop()
	for range 3 {
		if e := hs.h.expect(t, "logout"); !errors.Is(e.reason, ErrShutdown) {
			t.Fatalf("logout reason %v", e.reason)
		}
	}
	hs.h.none(t)
	for _, c := range append(clients, idle) {
		recvError(t, c, frame.CodeShuttingDown)
		recvEOF(t, c)
	}
	if hs.s.Count() != 0 || hs.s.Sessions() != 0 {
		t.Fatalf("after Run: count %d sessions %d", hs.s.Count(), hs.s.Sessions())
	}
	if got := counter(hs.s.m.disconnects[rShutdown]); got != 4 {
		t.Fatalf("disconnects{shutdown} = %v, want 4", got)
	}
	if err := hs.s.Run(context.Background()); !errors.Is(err, ErrRunTwice) {
		t.Fatalf("second Run: %v", err)
	}
}

func TestListenError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	s, err := New(Config{Listen: ln.Addr().String(), Codec: "jsonl"}, newFakeHandler(), nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := s.Run(ctx); err == nil {
		t.Fatal("Run on a busy port returned nil")
	}
}

func TestRunLeavesNoGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	ca := newTestCA(t, "subgate test CA")
	dir := t.TempDir()
	srvCert, srvKey := ca.issue(t, "gateway", true)
	hs := startServer(t, Config{
		Listen:       "127.0.0.1:0",
		Codec:        "jsonl",
		TLSListen:    "127.0.0.1:0",
		TLSCertFile:  writeFile(t, dir, "server.pem", srvCert),
		TLSKeyFile:   writeFile(t, dir, "server.key", srvKey),
		ClientCAFile: writeFile(t, dir, "ca.pem", ca.pem),
	}, nil, nil)
	plain := hs.login(t, "g1")
	hs.h.expect(t, "login")
	tc := hs.dial(t, southboundtest.Options{Addr: hs.s.TLSAddr().String(), NodeID: "g2",
		TLSConfig: clientTLS(t, ca, ca, "g2")})
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if _, err := tc.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	hs.h.expect(t, "login")
	hs.stop()
	_ = plain.Close()
	_ = tc.Close()
	var n int
	eventually(t, "goroutines back to the count before Run", func() bool {
		n = runtime.NumGoroutine()
		return n <= before
	})
}

// countHandler counts frames.
type countHandler struct {
	nopHandler
	n atomic.Int64
}

func (h *countHandler) Frame(*Conn, frame.Frame) { h.n.Add(1) }

// BenchmarkUplinkLoopback sends property reports from one device over
// loopback to the handler (binary codec); it reports, never asserts, speed.
func BenchmarkUplinkLoopback(b *testing.B) {
	const perOp = 100
	h := &countHandler{}
	s, err := New(Config{Listen: "127.0.0.1:0", Codec: "binary", Loops: 1, Workers: 1, WorkerQueue: 1 << 16},
		h, nil, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	hs := runServer(b, s, nil, nil, &syncBuffer{})
	c := hs.dial(b, southboundtest.Options{NodeID: "bench"})
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if _, err := c.Hello(ctx); err != nil {
		b.Fatal(err)
	}
	codec := frame.Binary()
	var batch []byte
	for range perOp {
		batch, _ = codec.AppendEncode(batch, report)
	}
	b.SetBytes(int64(len(batch)))
	b.ReportAllocs()
	ops := int64(0)
	for b.Loop() {
		if err := c.SendRaw(batch); err != nil {
			b.Fatal(err)
		}
		ops++
	}
	// Let the handler see the tail (after the timed loop).
	deadline := time.Now().Add(wait)
	for h.n.Load() < ops*perOp && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	b.ReportMetric(float64(h.n.Load())/float64(ops), "frames/op")
}

// TestWelcomeFirst: frames a Handler sends as soon as Login made the
// connection reachable (here: from Login itself, the earliest possible
// moment) reach the device after the welcome, in order, and their
// SendThen callbacks run once they are written.
func TestWelcomeFirst(t *testing.T) {
	for _, codec := range []string{"jsonl", "binary"} {
		t.Run(codec, func(t *testing.T) {
			h := newFakeHandler()
			done := make(chan error, 3)
			h.login = func(c *Conn, f frame.Frame) error {
				c.SetDeviceID("dev-" + f.NodeID)
				for i := uint32(1); i <= 3; i++ {
					if err := c.SendThen(frame.Frame{Type: frame.TypeAck, Seq: i}, func(err error) { done <- err }); err != nil {
						return err
					}
				}
				return nil
			}
			hs := startServer(t, Config{Codec: codec}, h, nil)
			c := hs.login(t, "early") // fails unless the welcome comes first
			hs.h.expect(t, "login")
			for i := uint32(1); i <= 3; i++ {
				if f := recv(t, c); f.Type != frame.TypeAck || f.Seq != i {
					t.Fatalf("frame %d after the welcome: %v seq %d", i, f.Type, f.Seq)
				}
				if err := waitErr(t, done, "SendThen callback of a held frame"); err != nil {
					t.Fatalf("done(%v)", err)
				}
			}
			if n := heldFrames(hs.s); n != 0 {
				t.Fatalf("%d frames still held after the welcome", n)
			}
		})
	}
}

// heldFrames counts the frames held for welcomes across the stripes.
func heldFrames(s *Server) int {
	n := 0
	for i := range s.stripes {
		st := &s.stripes[i]
		st.mu.Lock()
		for _, h := range st.early {
			n += len(h)
		}
		st.mu.Unlock()
	}
	return n
}

// TestEarlyFramesBounded: a Handler that sends more than maxEarly frames
// before the welcome gets ErrSlowReader and the connection is closed.
func TestEarlyFramesBounded(t *testing.T) {
	h := newFakeHandler()
	errs := make(chan error, 1)
	h.login = func(c *Conn, f frame.Frame) error {
		c.SetDeviceID("dev-" + f.NodeID)
		var err error
		for i := 0; i <= maxEarly && err == nil; i++ {
			err = c.Send(frame.Frame{Type: frame.TypeAck, Seq: uint32(i)})
		}
		errs <- err
		return nil
	}
	hs := startServer(t, Config{Codec: "jsonl"}, h, nil)
	c := hs.dial(t, southboundtest.Options{NodeID: "chatty"})
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	_, _ = c.Hello(ctx) // the connection is closed while logging in
	select {
	case err := <-errs:
		if !errors.Is(err, ErrSlowReader) {
			t.Fatalf("send %d before the welcome: %v, want ErrSlowReader", maxEarly+1, err)
		}
	case <-time.After(wait):
		t.Fatal("Login not called")
	}
	hs.h.expect(t, "login")
	hs.h.expect(t, "logout")
	if n := heldFrames(hs.s); n != 0 {
		t.Fatalf("%d frames of a closed connection still held", n)
	}
}
