package southbound

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"

	"github.com/panjf2000/gnet/v2"
)

// gnetServer runs the plain-TCP listener on gnet event loops. Its
// callbacks run on the loops and never block: they decode, hand frames to
// the workers with non-blocking pushes, and write with Conn.Write (own
// loop) or AsyncWrite (other goroutines).
type gnetServer struct {
	gnet.BuiltinEventEngine
	s      *Server
	eng    gnet.Engine
	addr   net.Addr
	booted chan struct{}
	done   chan error // gnet.Run's result; buffered
}

func newGnetServer(s *Server) *gnetServer {
	return &gnetServer{s: s, booted: make(chan struct{}), done: make(chan error, 1)}
}

// start runs gnet on its own goroutine (waited for by stop) and returns
// the bound address once the engine booted.
func (g *gnetServer) start() (net.Addr, error) {
	cfg := &g.s.cfg
	opts := []gnet.Option{
		gnet.WithMulticore(true),
		gnet.WithTCPNoDelay(gnet.TCPNoDelay),
		gnet.WithReusePort(false),
		// SO_REUSEADDR: a restart must bind the device port even while
		// thousands of old connections sit in TIME_WAIT.
		gnet.WithReuseAddr(true),
		gnet.WithLogger(gnetLogger{g.s.logBase.With("component", "gnet")}),
	}
	if cfg.Loops > 0 {
		opts = append(opts, gnet.WithNumEventLoop(cfg.Loops))
	}
	network, hostport := splitListen(cfg.Listen)
	go func() { g.done <- gnet.Run(g, network+"://"+hostport, opts...) }()
	select {
	case <-g.booted:
		if g.addr == nil {
			g.stop()
			return nil, errors.New("southbound: cannot read the bound address")
		}
		return g.addr, nil
	case err := <-g.done:
		if err == nil {
			err = errors.New("engine stopped before boot")
		}
		return nil, fmt.Errorf("southbound: listen %s: %w", cfg.Listen, err)
	}
}

// stop shuts the engine down (loops close every connection, calling
// OnClose) and waits until gnet.Run returned.
func (g *gnetServer) stop() {
	// Engine.Stop polls every 500ms for the end; with a context that is
	// already done it only triggers the shutdown, and the wait is on done.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = g.eng.Stop(ctx)
	<-g.done
}

// OnBoot keeps the engine and recovers the bound address (port 0 in
// tests) from a duplicate of the listener's descriptor (go-style §8).
func (g *gnetServer) OnBoot(eng gnet.Engine) gnet.Action {
	g.eng = eng
	if fd, err := eng.Dup(); err == nil {
		if sa, err := syscall.Getsockname(fd); err == nil {
			g.addr = sockaddrToTCP(sa)
		}
		_ = syscall.Close(fd)
	}
	close(g.booted)
	return gnet.None
}

func sockaddrToTCP(sa syscall.Sockaddr) net.Addr {
	switch a := sa.(type) {
	case *syscall.SockaddrInet4:
		return &net.TCPAddr{IP: net.IP(a.Addr[:]).To16(), Port: a.Port}
	case *syscall.SockaddrInet6:
		return &net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}
	}
	return nil
}

// OnOpen admits the connection or refuses it with an error frame.
func (g *gnetServer) OnOpen(gc gnet.Conn) ([]byte, gnet.Action) {
	s := g.s
	tr := &gnetTransport{gc: gc}
	c, code, reason := s.admit(addrString(gc.RemoteAddr()), tr)
	if c == nil {
		return s.refusal(code, reason), gnet.Close
	}
	gc.SetContext(c)
	return s.greeting(c), gnet.None
}

// OnTraffic decodes what arrived (peek, decode, clone out, discard).
func (g *gnetServer) OnTraffic(gc gnet.Conn) gnet.Action {
	c, ok := gc.Context().(*Conn)
	if !ok {
		return gnet.Close
	}
	buf, _ := gc.Peek(-1)
	used, closeNow := g.s.consume(c, buf)
	if used > 0 {
		_, _ = gc.Discard(used)
	}
	if closeNow {
		return gnet.Close
	}
	return gnet.None
}

// OnClose finishes an admitted connection.
func (g *gnetServer) OnClose(gc gnet.Conn, err error) gnet.Action {
	if c, ok := gc.Context().(*Conn); ok {
		gc.SetContext(nil)
		g.s.closed(c, err)
	}
	return gnet.None
}

// gnetTransport is a transport over a gnet connection.
type gnetTransport struct {
	gc gnet.Conn
	c  *Conn
}

func (t *gnetTransport) write(b []byte, cb func(error)) error {
	return t.gc.AsyncWrite(b, func(gc gnet.Conn, err error) error {
		if err == nil {
			t.checkOutbound(gc)
		}
		if cb != nil {
			cb(err)
		}
		return nil
	})
}

// checkOutbound cuts off a device whose unsent bytes in gnet's buffer
// exceed MaxOutbound. Runs on the loop.
func (t *gnetTransport) checkOutbound(gc gnet.Conn) {
	s := t.c.srv()
	if gc.OutboundBuffered() <= s.cfg.MaxOutbound {
		return
	}
	if t.c.reason.CompareAndSwap(uint32(rNone), uint32(rSlowReader)) {
		s.m.limitHits[lOutbound].Inc()
		s.warn.emit("slow reader", "remote", t.c.remote, "device_id", t.c.NodeID(), "n", gc.OutboundBuffered())
		_ = gc.Close()
	}
}

func (t *gnetTransport) writeOwner(b []byte) {
	if _, err := t.gc.Write(b); err == nil {
		t.checkOutbound(t.gc)
	}
}

// close closes the connection after every write queued before it. gnet
// runs AsyncWrite tasks from its high-priority queue and Close from the
// low-priority one, so a plain Close may overtake queued writes: an empty
// write goes through the same queue and closes in its callback.
func (t *gnetTransport) close() {
	err := t.gc.AsyncWrite(nil, func(gc gnet.Conn, _ error) error {
		return gc.Close()
	})
	if err != nil {
		_ = t.gc.Close()
	}
}

func (t *gnetTransport) peerName() string { return "" }

func (t *gnetTransport) setConn(c *Conn) { t.c = c }
