package southbound

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/subgate/subgate/southbound/frame"
)

// transport is what a Conn needs from its socket. gnet connections and
// TLS connections implement it, so both feed the same worker and session
// layer.
type transport interface {
	// write queues b to be written after everything queued before it and
	// never blocks. It owns b from then on. cb, when not nil, runs once
	// with the outcome, on the transport's own goroutine (a gnet loop or
	// the TLS writer): it must not block.
	write(b []byte, cb func(error)) error
	// writeOwner writes b from the goroutine that reads the connection
	// (the gnet loop inside OnTraffic, the TLS reader) so that a close
	// right after it still flushes b.
	writeOwner(b []byte)
	// close closes the connection once what was queued before is written
	// (best effort, bounded). Safe from any goroutine, idempotent.
	close()
	// peerName is the common name of the verified client certificate, or
	// "" for a plain connection.
	peerName() string
	// setConn tells the transport its Conn, before any other use.
	setConn(c *Conn)
}

// Connection phases.
const (
	phaseNew   uint32 = iota // no hello yet (demo: not logged in)
	phaseHello               // native: the hello is queued or being handled
	phaseBound               // logged in
	phaseReady               // native: logged in and the welcome queued; Handler sends go straight out
)

// identity is allocated at login: an idle connection that never logged in
// carries none of it.
type identity struct {
	nodeID   string
	deviceID string
}

// heldSend is a frame a Handler sent between binding the connection in
// Login and the welcome (native codecs), with its SendThen callback. The
// welcome is always the first frame a device gets after its hello: such
// frames wait in the connection's stripe (stripe.early, so that no Conn
// carries a field for them) until ready sends them.
type heldSend struct {
	f  frame.Frame
	sd *sendDone
}

// maxEarly bounds the frames held for a connection before its welcome.
// A Handler has microseconds to send them (between Login and the
// welcome), so more than a few means something is wrong: the connection
// is then closed like one whose outbound buffer overflowed.
const maxEarly = 64

// Conn is one device connection. Its methods are safe for use from any
// goroutine. Handler methods for one Conn never run concurrently.
//
// Every idle connection holds one Conn, so its fields are ordered to leave
// no padding and it stays within the 144-byte size class (TestConnSize):
// the server is reached through the worker, the identity lock is one of
// the server's striped locks, and what only some connections need (the
// identity, the token nonce, SendThen callbacks) is allocated when needed.
type Conn struct {
	tr     transport
	w      *worker // also the way to the Server (w.s)
	id     uint64
	remote string
	opened int64 // unix nanoseconds

	lastSeen atomic.Int64  // unix nanoseconds of the last bytes received
	phase    atomic.Uint32 // phaseNew, phaseHello, phaseBound, phaseReady
	reason   atomic.Uint32 // closeReason; non-zero once a close began
	outq     atomic.Int32  // bytes handed to write and not yet completed (<= maxMaxOutbound)

	// Owned by the reading goroutine (gnet loop or TLS reader), except
	// nonce, which login clears once the hello is checked (the hello is
	// handed to the worker after greeting set it).
	tokens   float32 // rate-limit bucket; float32 holds RateBurst tokens exactly
	bad      uint16  // bad frames in a row
	strikes  uint16  // rate-limited frames in a row
	tokensAt int64
	nonce    *[16]byte // token challenge, set in greeting, cleared at login

	// Owned by the sweeper.
	pingedFor int64

	// The server's identity lock (Conn.ilock) guards the following fields.
	ident   *identity              // (the lock also guards stripe.early)
	pending map[*sendDone]struct{} // SendThen callbacks not yet run; nil when none

	// hmu serialises Handler calls for this connection; it guards the
	// following fields.
	hmu       sync.Mutex
	bound     bool   // Login returned nil
	loggedOut bool   // Logout ran (or the conn will never be bound)
	refusals  uint16 // demo: refused logins in a row
}

// srv returns the connection's server.
func (c *Conn) srv() *Server { return c.w.s }

// ilock returns the lock guarding c.ident and c.pending: one of the
// server's striped locks, so that a connection carries no mutex of its own
// for fields it rarely touches. It is never held while another is taken.
func (c *Conn) ilock() *sync.Mutex { return &c.stripe().mu }

// stripe returns the server stripe that c's identity lock belongs to.
func (c *Conn) stripe() *stripe {
	st := &c.w.s.stripes
	return &st[c.id%uint64(len(st))]
}

// ID returns a number unique to this connection within the process.
func (c *Conn) ID() uint64 { return c.id }

// Remote returns the device's address, "ip:port".
func (c *Conn) Remote() string { return c.remote }

// ConnectedAt returns when the connection was accepted.
func (c *Conn) ConnectedAt() time.Time { return time.Unix(0, c.opened) }

// Codec returns the connection's codec.
func (c *Conn) Codec() frame.Codec { return c.srv().codec }

// Native reports whether the codec is a native one (it carries hellos,
// acks and device answers); the demo codec is not.
func (c *Conn) Native() bool { return c.srv().native }

// NodeID returns the node id the device logged in with ("" before login).
// For the demo codec it is the id the device sent.
func (c *Conn) NodeID() string {
	mu := c.ilock()
	mu.Lock()
	defer mu.Unlock()
	if c.ident == nil {
		return ""
	}
	return c.ident.nodeID
}

// DeviceID returns the platform device id set by SetDeviceID ("" when
// unset).
func (c *Conn) DeviceID() string {
	mu := c.ilock()
	mu.Lock()
	defer mu.Unlock()
	if c.ident == nil {
		return ""
	}
	return c.ident.deviceID
}

// SetDeviceID records the platform device id of the connection. Call it
// in Handler.Login: native codecs send it in the welcome frame.
func (c *Conn) SetDeviceID(id string) {
	mu := c.ilock()
	mu.Lock()
	defer mu.Unlock()
	if c.ident == nil {
		c.ident = &identity{}
	}
	c.ident.deviceID = id
}

func (c *Conn) setNodeID(id string) {
	mu := c.ilock()
	mu.Lock()
	defer mu.Unlock()
	if c.ident == nil {
		c.ident = &identity{}
	}
	c.ident.nodeID = id
}

// closing reports whether a close began.
func (c *Conn) closing() bool { return c.reason.Load() != uint32(rNone) }

// Send encodes f and queues it for the device. It never blocks. It fails
// with ErrClosed on a closed connection, with ErrSlowReader when the
// device does not read fast enough (the connection is then closed) and
// with frame.ErrCannotCarry for a frame the codec cannot express.
func (c *Conn) Send(f frame.Frame) error {
	return c.send(f, nil)
}

// SendThen is Send with a completion callback: done runs once, on the
// connection's worker goroutine (in order with Handler calls for this
// connection), with nil when the bytes were handed to the kernel, or the
// error when they will never be. When SendThen returns an error, done is
// not called.
func (c *Conn) SendThen(f frame.Frame, done func(error)) error {
	if done == nil {
		return c.send(f, nil)
	}
	sd := &sendDone{c: c, fn: done}
	mu := c.ilock()
	mu.Lock()
	if c.pending == nil {
		c.pending = make(map[*sendDone]struct{})
	}
	c.pending[sd] = struct{}{}
	mu.Unlock()
	if err := c.send(f, sd); err != nil {
		c.forget(sd)
		return err
	}
	return nil
}

// Close sends an error frame with code and reason (when code is not
// CodeNone) and closes the connection. Logout follows with ErrKicked.
func (c *Conn) Close(code frame.ErrorCode, reason string) {
	c.srv().closeConn(c, rKicked, code, reason)
}

// sendDone is a SendThen callback waiting for its write.
type sendDone struct {
	c  *Conn
	fn func(error)
}

// complete hands the outcome of the write to the connection's worker,
// unless the close already failed it.
func (sd *sendDone) complete(err error) {
	c := sd.c
	if c.forget(sd) && !c.w.push(item{c: c, kind: itemDone, done: sd.fn, err: err}) {
		// The worker stopped: nobody else will run it.
		sd.fn(err)
	}
}

// forget removes sd from the callbacks waiting and reports whether it was
// there. An emptied table is released: a device that once got a command
// does not keep an empty map for the rest of its connection.
func (c *Conn) forget(sd *sendDone) bool {
	mu := c.ilock()
	mu.Lock()
	defer mu.Unlock()
	_, ok := c.pending[sd]
	delete(c.pending, sd)
	if len(c.pending) == 0 {
		c.pending = nil
	}
	return ok
}

// takePending removes and returns the callbacks still waiting.
func (c *Conn) takePending() []func(error) {
	mu := c.ilock()
	mu.Lock()
	defer mu.Unlock()
	if len(c.pending) == 0 {
		return nil
	}
	out := make([]func(error), 0, len(c.pending))
	for sd := range c.pending {
		out = append(out, sd.fn)
	}
	c.pending = nil
	return out
}

// send is Send and SendThen. For native codecs, frames sent after Login
// bound the connection and before the server queued the welcome are held and sent right after it,
// in the order they were sent. Their errors then reach only SendThen's
// callback.
func (c *Conn) send(f frame.Frame, sd *sendDone) error {
	if c.closing() {
		return ErrClosed
	}
	if c.phase.Load() != phaseReady && c.srv().native {
		held, err := c.hold(f, sd)
		if held || err != nil {
			return err
		}
	}
	return c.sendNow(f, sd)
}

// hold keeps f for ready when the connection is not ready yet. It reports
// false when the connection became ready meanwhile.
func (c *Conn) hold(f frame.Frame, sd *sendDone) (bool, error) {
	st := c.stripe()
	st.mu.Lock()
	if c.closing() {
		// Checked under the lock: dropEarly, which runs after a close
		// began, then finds everything held before it.
		st.mu.Unlock()
		return false, ErrClosed
	}
	if c.phase.Load() == phaseReady || c.ident == nil {
		// Ready meanwhile, or not bound at all: nothing but the server
		// writes to a connection before Login, and the server does not
		// come here.
		st.mu.Unlock()
		return false, nil
	}
	held := st.early[c]
	if len(held) >= maxEarly {
		st.mu.Unlock()
		c.srv().slowReader(c, -1)
		return false, ErrSlowReader
	}
	if st.early == nil {
		st.early = make(map[*Conn][]heldSend)
	}
	st.early[c] = append(held, heldSend{f: f, sd: sd})
	st.mu.Unlock()
	return true, nil
}

// ready sends the frames held before the welcome, then lets later sends
// go straight out. It runs on the worker right after the welcome was
// queued. A frame sent while it flushes is held and sent in a later round,
// so one goroutine's frames keep their order.
func (c *Conn) ready() {
	st := c.stripe()
	for {
		st.mu.Lock()
		early := st.early[c]
		if len(early) == 0 {
			c.phase.Store(phaseReady)
			if len(st.early) == 0 {
				st.early = nil
			}
			st.mu.Unlock()
			return
		}
		delete(st.early, c)
		st.mu.Unlock()
		for _, h := range early {
			if err := c.sendNow(h.f, h.sd); err != nil && h.sd != nil {
				h.sd.complete(err)
			}
		}
	}
}

// dropEarly forgets frames held for a connection that closed before its
// welcome. Their SendThen callbacks are among the pending ones the close
// fails.
func (c *Conn) dropEarly() {
	st := c.stripe()
	st.mu.Lock()
	delete(st.early, c)
	if len(st.early) == 0 {
		st.early = nil
	}
	st.mu.Unlock()
}

// slowReader closes c because what it has not read yet would pass
// MaxOutbound (queued: the bytes it would take; -1 for frames held before
// the welcome): counted and logged (rate-limited) like every bound.
func (s *Server) slowReader(c *Conn, queued int) {
	s.m.limitHits[lOutbound].Inc()
	if queued < 0 {
		s.warn.emit("slow reader", "remote", c.remote, "device_id", c.NodeID(), "held_before_welcome", maxEarly)
	} else {
		s.warn.emit("slow reader", "remote", c.remote, "device_id", c.NodeID(), "n", queued)
	}
	s.closeConn(c, rSlowReader, frame.CodeSlowReader, "outbound buffer full")
}

// sendNow encodes f and hands it to the transport.
func (c *Conn) sendNow(f frame.Frame, sd *sendDone) error {
	if c.closing() {
		return ErrClosed
	}
	s := c.srv()
	bp := getBuf()
	b, err := s.codec.AppendEncode((*bp)[:0], f)
	if err != nil {
		putBuf(bp)
		return err
	}
	if len(b) == 0 {
		// The codec has nothing to say for this frame (demo pings).
		*bp = b
		putBuf(bp)
		if sd != nil {
			sd.complete(nil)
		}
		return nil
	}
	if len(b) > s.cfg.MaxOutbound {
		// Never queued: MaxOutbound (<= maxMaxOutbound) keeps outq in int32.
		*bp = b
		putBuf(bp)
		s.slowReader(c, int(c.outq.Load())+len(b))
		return ErrSlowReader
	}
	n := int32(len(b))
	if c.outq.Add(n) > int32(s.cfg.MaxOutbound) {
		c.outq.Add(-n)
		*bp = b
		putBuf(bp)
		s.slowReader(c, int(c.outq.Load())+len(b))
		return ErrSlowReader
	}
	t := f.Type
	err = c.tr.write(b, func(err error) {
		c.outq.Add(-n)
		*bp = b[:0]
		putBuf(bp)
		if err == nil {
			s.m.bytesOut.Add(float64(n))
			s.m.frameOut(t)
		}
		if sd != nil {
			sd.complete(err)
		}
	})
	if err != nil {
		// The transport refused before owning b: the callback will not run.
		c.outq.Add(-n)
		*bp = b[:0]
		putBuf(bp)
		return ErrClosed
	}
	return nil
}

// sendOwner encodes and writes f from the reading goroutine; errors are
// ignored (the connection is closing or the frame cannot be carried).
func (c *Conn) sendOwner(f frame.Frame) {
	s := c.srv()
	b, err := s.codec.AppendEncode(nil, f)
	if err != nil || len(b) == 0 {
		return
	}
	s.m.frameOut(f.Type)
	s.m.bytesOut.Add(float64(len(b)))
	c.tr.writeOwner(b)
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

const maxPooledBuf = 64 << 10

func getBuf() *[]byte { return bufPool.Get().(*[]byte) }

func putBuf(bp *[]byte) {
	if cap(*bp) > maxPooledBuf {
		return
	}
	*bp = (*bp)[:0]
	bufPool.Put(bp)
}
