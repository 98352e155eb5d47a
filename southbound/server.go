package southbound

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/subgate/subgate/southbound/frame"
	"github.com/subgate/subgate/subdevice"
)

// Handler is implemented by the gateway. Every method runs on a worker
// goroutine, never on an event loop, and the calls for one connection never
// overlap and keep their order. A method may block briefly (a store
// lookup), which delays the other connections of the same worker.
type Handler interface {
	// Login decides whether an authenticated identity may use the gateway.
	// hello is the hello frame (native codecs) or, for demo, the first
	// message frame (NodeID = the id the demo device sent; Content = its
	// content). Returning nil binds the connection: for native codecs the
	// server then sends TypeWelcome with DeviceID from c.DeviceID() (the
	// node id when Login set none). The welcome is the first frame the
	// device gets: what the Handler sends to c once Login made it
	// reachable is held until the welcome is queued. A
	// non-nil error refuses: a *frame.Error gives the code and reason sent
	// to the device (native: then close; demo: the reason is sent as a
	// reply and the connection stays open until MaxBadFrames refusals in a
	// row); any other error is sent as CodeInternal.
	Login(c *Conn, hello frame.Frame) error
	// Frame is called for every frame after login (demo: including the
	// first message, right after Login succeeded), in order per
	// connection. Ping and pong are handled by the server and not passed
	// on. The identity is c's: f.NodeID of a demo frame is what the
	// device wrote and is not checked against it.
	Frame(c *Conn, f frame.Frame)
	// Logout is called once per bound connection after it closed (reason
	// says why: ErrPeerClosed, ErrKicked, ErrIdle, ...). With kick-old,
	// the old connection is closed and its Logout runs before Login runs
	// for the new one (even if that Login then refuses).
	Logout(c *Conn, reason error)
}

// Secrets gives the secret of a device for token auth. It is called on a
// worker goroutine, never on an event loop.
type Secrets interface {
	DeviceSecret(nodeID string) (secret []byte, ok bool, err error)
}

// Server accepts device connections, authenticates them, and hands their
// frames to a Handler. Create it with New, start it with Run.
type Server struct {
	cfg     Config
	h       Handler
	secrets Secrets
	log     *slog.Logger // component=southbound
	logBase *slog.Logger // as given to New, for gnet's own component
	warn    *rateLog     // misbehaving devices, refusals
	errs    *rateLog     // failures of Secrets or the Handler, per device
	m       *metrics
	codec   frame.Codec
	native  bool
	allow   map[string]struct{}
	tlsConf *tls.Config
	now     func() time.Time

	workers []*worker
	stripes [64]stripe // Conn.ilock
	nextID  atomic.Uint64
	open    atomic.Int64
	nbound  atomic.Int64
	conns   connTable

	sweepMu  sync.Mutex // serialises sweep (it owns Conn.pingedFor)
	running  atomic.Bool
	stopping atomic.Bool
	ready    chan struct{}
	addr     net.Addr // set before ready is closed
	tlsAddr  net.Addr // set before ready is closed

	// ipMu guards perIP.
	ipMu  sync.Mutex
	perIP map[string]int32

	// smu guards sessions: node id -> the connection that holds it (bound,
	// or reserved while its Login runs). No I/O while held.
	smu      sync.Mutex
	sessions map[string]*Conn
}

// New validates cfg and prepares a server; it binds and starts nothing.
// secrets is needed for token auth only. reg may be nil (no metrics
// exported).
func New(cfg Config, h Handler, secrets Secrets, log *slog.Logger, reg prometheus.Registerer) (*Server, error) {
	cfg.SetDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if h == nil {
		return nil, ErrNilHandler
	}
	if cfg.Auth == AuthToken && secrets == nil {
		return nil, ErrNoSecrets
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	base := log
	log = log.With("component", "southbound")
	codec := cfg.CodecImpl
	if codec == nil {
		var err error
		if codec, err = newCodec(cfg.Codec, cfg.MaxFrame); err != nil {
			return nil, configErr("codec", "%v", err)
		}
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("southbound: metrics: %w", err)
	}
	s := &Server{
		cfg:      cfg,
		h:        h,
		secrets:  secrets,
		log:      log,
		logBase:  base,
		warn:     newRateLog(log, slog.LevelWarn, 20, 10*time.Second),
		errs:     newRateLog(log, slog.LevelError, 10, 10*time.Second),
		m:        m,
		codec:    codec,
		native:   codec.Native(),
		now:      time.Now,
		ready:    make(chan struct{}),
		perIP:    make(map[string]int32),
		sessions: make(map[string]*Conn),
	}
	if len(cfg.AllowList) > 0 {
		s.allow = make(map[string]struct{}, len(cfg.AllowList))
		for _, id := range cfg.AllowList {
			s.allow[id] = struct{}{}
		}
	}
	if cfg.TLSListen != "" {
		if s.tlsConf, err = loadTLS(&cfg); err != nil {
			return nil, err
		}
	}
	s.workers = make([]*worker, cfg.Workers)
	for i := range s.workers {
		s.workers[i] = newWorker(s)
	}
	s.conns.init()
	return s, nil
}

func loadTLS(cfg *Config) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
	if err != nil {
		return nil, configErr("tls_cert_file", "%v", err)
	}
	pem, err := os.ReadFile(cfg.ClientCAFile)
	if err != nil {
		return nil, configErr("client_ca_file", "%v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, configErr("client_ca_file", "no PEM certificate in %s", cfg.ClientCAFile)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// Ready is closed once the listeners are bound.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addr returns the plain listener's address (nil when off). Valid after
// Ready.
func (s *Server) Addr() net.Addr {
	select {
	case <-s.ready:
		return s.addr
	default:
		return nil
	}
}

// TLSAddr returns the TLS listener's address (nil when off). Valid after
// Ready.
func (s *Server) TLSAddr() net.Addr {
	select {
	case <-s.ready:
		return s.tlsAddr
	default:
		return nil
	}
}

// Count returns the number of open connections.
func (s *Server) Count() int { return int(s.open.Load()) }

// Sessions returns the number of logged-in connections.
func (s *Server) Sessions() int { return int(s.nbound.Load()) }

// Lookup returns the logged-in connection of nodeID.
func (s *Server) Lookup(nodeID string) (*Conn, bool) {
	s.smu.Lock()
	c := s.sessions[nodeID]
	s.smu.Unlock()
	if c == nil || c.phase.Load() < phaseBound || c.closing() {
		return nil, false
	}
	return c, true
}

// Kick sends an error frame with code and reason to the connection logged
// in as nodeID and closes it. It reports whether there was one.
func (s *Server) Kick(nodeID string, code frame.ErrorCode, reason string) bool {
	c, ok := s.Lookup(nodeID)
	if !ok {
		return false
	}
	c.Close(code, reason)
	return true
}

// Run binds the listeners and serves until ctx is done. Then it stops
// accepting, closes every connection (Logout runs for each bound one),
// drains the workers and returns once every goroutine it started has
// exited. It returns nil after ctx is done, or the error that stopped it.
func (s *Server) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return ErrRunTwice
	}
	var workers sync.WaitGroup
	for _, w := range s.workers {
		workers.Go(w.run)
	}
	defer func() {
		for _, w := range s.workers {
			w.stop()
		}
		workers.Wait()
	}()

	var tlsLn net.Listener
	var tlsConns sync.WaitGroup
	if s.cfg.TLSListen != "" {
		ln, err := net.Listen("tcp", s.cfg.TLSListen)
		if err != nil {
			return fmt.Errorf("southbound: tls listen: %w", err)
		}
		tlsLn = ln
		s.tlsAddr = ln.Addr()
	}
	closeTLS := func() {
		if tlsLn != nil {
			_ = tlsLn.Close()
		}
	}

	var g *gnetServer
	if s.cfg.Listen != "" {
		g = newGnetServer(s)
		addr, err := g.start()
		if err != nil {
			closeTLS()
			return err
		}
		s.addr = addr
	}
	if tlsLn != nil {
		tlsConns.Go(func() { s.acceptTLS(tlsLn, &tlsConns) })
	}

	sweepStop := make(chan struct{})
	var sweeper sync.WaitGroup
	sweeper.Go(func() { s.sweepLoop(sweepStop) })

	close(s.ready)
	s.log.Info("listening", "n", s.cfg.MaxConns)

	var runErr error
	var gnetDone <-chan error
	if g != nil {
		gnetDone = g.done
	}
	select {
	case <-ctx.Done():
	case err := <-gnetDone:
		runErr = fmt.Errorf("southbound: event loops stopped: %w", err)
		gnetDone = nil
		g = nil
	}

	// Stop intake, then close every connection with a reason.
	s.stopping.Store(true)
	closeTLS()
	for _, c := range s.conns.snapshot() {
		s.closeConn(c, rShutdown, frame.CodeShuttingDown, "gateway stopping")
	}
	if g != nil {
		g.stop()
	}
	tlsConns.Wait()
	close(sweepStop)
	sweeper.Wait()
	s.log.Info("stopped", "n", s.open.Load())
	return runErr
}

// admit registers a new connection, or refuses it with a code when a
// connection limit is hit. Runs on the accepting goroutine (gnet loop or
// TLS acceptor).
func (s *Server) admit(remote string, tr transport) (*Conn, frame.ErrorCode, string) {
	if s.stopping.Load() {
		return nil, frame.CodeShuttingDown, "gateway stopping"
	}
	if s.open.Add(1) > int64(s.cfg.MaxConns) {
		s.open.Add(-1)
		s.m.rejects[rjMaxConns].Inc()
		s.m.limitHits[lMaxConns].Inc()
		s.warn.emit("connection refused", "remote", remote, "err", "max_conns")
		return nil, frame.CodeTooManyConns, "too many connections"
	}
	if s.cfg.MaxConnsPerIP > 0 {
		ip := hostOf(remote)
		s.ipMu.Lock()
		n := s.perIP[ip]
		if int(n) >= s.cfg.MaxConnsPerIP {
			s.ipMu.Unlock()
			s.open.Add(-1)
			s.m.rejects[rjMaxConnsPerIP].Inc()
			s.m.limitHits[lMaxConnsPerIP].Inc()
			s.warn.emit("connection refused", "remote", remote, "err", "max_conns_per_ip")
			return nil, frame.CodeTooManyConns, "too many connections from this address"
		}
		s.perIP[ip] = n + 1
		s.ipMu.Unlock()
	}
	id := s.nextID.Add(1)
	now := s.now().UnixNano()
	c := &Conn{
		tr:     tr,
		w:      s.workers[id%uint64(len(s.workers))],
		id:     id,
		remote: remote,
		opened: now,
	}
	c.lastSeen.Store(now)
	tr.setConn(c)
	s.conns.add(c)
	s.m.accepts.Inc()
	s.m.connections.Inc()
	if s.stopping.Load() {
		// Run took its snapshot of the connections to close before c was
		// in the table: close c here, through the normal path.
		s.closeConn(c, rShutdown, frame.CodeShuttingDown, "gateway stopping")
	}
	return c, frame.CodeNone, ""
}

// greeting returns the bytes to send when c opens: the token challenge
// for native codecs on a plain connection, else nothing.
func (s *Server) greeting(c *Conn) []byte {
	if s.cfg.Auth != AuthToken || c.tr.peerName() != "" {
		return nil
	}
	c.nonce = new([16]byte)
	_, _ = rand.Read(c.nonce[:]) // never fails (crypto/rand)
	b, err := s.codec.AppendEncode(nil, frame.Frame{Type: frame.TypeChallenge, Nonce: c.nonce[:]})
	if err != nil {
		return nil
	}
	s.m.frameOut(frame.TypeChallenge)
	s.m.bytesOut.Add(float64(len(b)))
	return b
}

// refusal encodes the error frame sent to a refused connection.
func (s *Server) refusal(code frame.ErrorCode, reason string) []byte {
	b, err := s.codec.AppendEncode(nil, frame.Frame{Type: frame.TypeError, Code: code, Reason: reason})
	if err != nil || len(b) == 0 {
		return nil
	}
	s.m.frameOut(frame.TypeError)
	s.m.bytesOut.Add(float64(len(b)))
	return b
}

// closed finishes a connection after its transport closed. Runs once per
// admitted connection, on its reading goroutine. err is the transport's
// last error.
func (s *Server) closed(c *Conn, err error) {
	r := closeReason(c.reason.Load())
	if r == rNone {
		r = rPeer
		switch {
		case s.stopping.Load() && err == nil:
			r = rShutdown
		case err == nil, errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE),
			errors.Is(err, net.ErrClosed):
		default:
			r = rError
		}
		if !c.reason.CompareAndSwap(uint32(rNone), uint32(r)) {
			r = closeReason(c.reason.Load())
		}
	}
	s.conns.remove(c)
	s.open.Add(-1)
	if s.cfg.MaxConnsPerIP > 0 {
		ip := hostOf(c.remote)
		s.ipMu.Lock()
		if n := s.perIP[ip] - 1; n > 0 {
			s.perIP[ip] = n
		} else {
			delete(s.perIP, ip)
		}
		s.ipMu.Unlock()
	}
	s.m.connections.Dec()
	s.m.disconnects[r].Inc()
	if r == rError {
		s.warn.emit("connection error", "remote", c.remote, "err", err)
	}
	if !c.w.push(item{c: c, kind: itemClose}) {
		// Only after Run stopped the workers, which it does once every
		// transport is closed: finish here.
		s.handle(&item{c: c, kind: itemClose})
	}
}

// closeConn starts closing c for reason r: an error frame first when code
// is not CodeNone. Safe from any goroutine; only the first call counts.
func (s *Server) closeConn(c *Conn, r closeReason, code frame.ErrorCode, reason string) {
	if !c.reason.CompareAndSwap(uint32(rNone), uint32(r)) {
		return
	}
	if code != frame.CodeNone {
		if b := s.refusal(code, reason); b != nil {
			_ = c.tr.write(b, nil)
		}
	}
	c.tr.close()
}

// closeOwner is closeConn for the reading goroutine, which then closes the
// transport itself (gnet: by returning gnet.Close).
func (s *Server) closeOwner(c *Conn, r closeReason, code frame.ErrorCode, reason string, seq uint32) {
	if !c.reason.CompareAndSwap(uint32(rNone), uint32(r)) {
		return
	}
	if code != frame.CodeNone {
		c.sendOwner(frame.Frame{Type: frame.TypeError, Code: code, Reason: reason, Seq: seq})
	}
}

// handle runs one worker item.
func (s *Server) handle(it *item) {
	c := it.c
	switch it.kind {
	case itemDone:
		it.done(it.err)
	case itemClose:
		c.dropEarly()
		for _, fn := range c.takePending() {
			fn(ErrClosed)
		}
		c.hmu.Lock()
		s.logoutLocked(c, closeReason(c.reason.Load()).err())
		c.hmu.Unlock()
	case itemFrame:
		c.hmu.Lock()
		defer c.hmu.Unlock()
		switch {
		case c.loggedOut:
		case c.bound:
			s.h.Frame(c, it.f)
		case s.native:
			if it.f.Type == frame.TypeHello {
				s.login(c, it.f)
			}
			// Other frames queued behind a refused hello are dropped:
			// the connection is closing.
		default:
			// Demo: every frame of a connection not logged in is a login
			// attempt, and the first message once it succeeds.
			if s.login(c, it.f) {
				s.h.Frame(c, it.f)
			}
		}
	}
}

// logoutLocked ends c's session once. c.hmu must be held.
func (s *Server) logoutLocked(c *Conn, reason error) {
	if c.loggedOut {
		return
	}
	c.loggedOut = true
	if node := c.NodeID(); node != "" {
		s.unreserve(node, c)
	}
	if c.bound {
		s.nbound.Add(-1)
		s.m.sessions.Dec()
		s.log.Debug("logout", "device_id", c.NodeID(), "remote", c.remote, "err", reason)
		s.h.Logout(c, reason)
	}
}

// unreserve removes node from the session table if c holds it.
func (s *Server) unreserve(node string, c *Conn) {
	s.smu.Lock()
	if s.sessions[node] == c {
		delete(s.sessions, node)
	}
	s.smu.Unlock()
}

// login authenticates and binds c. c.hmu is held. It reports whether c is
// now bound.
func (s *Server) login(c *Conn, hello frame.Frame) bool {
	if c.closing() {
		return false
	}
	node := hello.NodeID
	if cn := c.tr.peerName(); cn != "" {
		if node == "" {
			node = cn
		} else if node != cn {
			return s.refuse(c, "", rjAuthFailed, frame.CodeAuthFailed, "node id does not match the certificate", node)
		}
	}
	if s.native {
		if err := subdevice.ValidateNodeID(node); err != nil {
			return s.refuse(c, "", rjBadHello, frame.CodeBadFrame, "invalid node id", "")
		}
	} else if err := subdevice.ValidateDeviceID(node); err != nil {
		return s.refuse(c, "", rjBadHello, frame.CodeBadFrame, "invalid device id", "")
	}
	if s.cfg.Auth == AuthToken && c.tr.peerName() == "" {
		secret, ok, err := s.secrets.DeviceSecret(node)
		switch {
		case err != nil:
			s.errs.emit("device secret lookup failed", "device_id", node, "err", err)
			return s.refuse(c, "", rjAuthFailed, frame.CodeInternal, "authentication unavailable", node)
		case !ok || c.nonce == nil || hello.Proof == "" || !frame.CheckProof(secret, c.nonce[:], node, hello.Proof):
			return s.refuse(c, "", rjAuthFailed, frame.CodeAuthFailed, "authentication failed", node)
		}
		// The nonce is spent: a second hello is refused before it gets
		// here, so it need not live as long as the connection.
		c.nonce = nil
	}
	if s.allow != nil {
		if _, ok := s.allow[node]; !ok {
			return s.refuse(c, "", rjNotAllowed, frame.CodeAuthFailed, "not allowed", node)
		}
	}

	// Reserve the node id; kick or refuse whoever holds it.
	s.smu.Lock()
	old := s.sessions[node]
	if old != nil && old != c && !old.closing() && s.cfg.SecondLogin == RejectNew {
		s.smu.Unlock()
		return s.refuse(c, "", rjDuplicate, frame.CodeDuplicate, "node id already connected", node)
	}
	s.sessions[node] = c
	s.smu.Unlock()
	c.setNodeID(node)
	if old != nil && old != c {
		s.closeConn(old, rKicked, frame.CodeKicked, "logged in elsewhere")
		// Lock order: a connection's hmu, then that of the connection it
		// replaces (always an older holder of the node id), never back.
		old.hmu.Lock()
		s.logoutLocked(old, ErrKicked)
		old.hmu.Unlock()
	}

	if err := s.h.Login(c, hello); err != nil {
		var fe *frame.Error
		if !errors.As(err, &fe) {
			s.errs.emit("login handler failed", "device_id", node, "err", err)
			return s.refuse(c, node, rjRefused, frame.CodeInternal, "login failed", node)
		}
		rj := rjRefused
		switch fe.Code {
		case frame.CodeAuthFailed:
			rj = rjAuthFailed
		case frame.CodeDuplicate:
			rj = rjDuplicate
		}
		return s.refuse(c, node, rj, fe.Code, fe.Reason, node)
	}
	c.bound = true
	c.refusals = 0
	c.phase.Store(phaseBound)
	s.nbound.Add(1)
	s.m.sessions.Inc()
	s.log.Debug("login", "device_id", node, "remote", c.remote)
	if s.native {
		id := c.DeviceID()
		if id == "" {
			// The welcome needs a device id; a Handler that set none gets
			// the node id echoed rather than a device left waiting.
			id = node
		}
		if err := c.sendNow(frame.Frame{Type: frame.TypeWelcome, Seq: hello.Seq, NodeID: node, DeviceID: id}, nil); err != nil && !errors.Is(err, ErrClosed) {
			s.errs.emit("welcome not sent", "device_id", node, "err", err)
		}
		// What the Handler sent since it bound the connection follows
		// the welcome.
		c.ready()
	}
	return true
}

// refuse answers a failed login. reserved is the node id c holds in the
// session table ("" when none). node is only logged. c.hmu is held.
func (s *Server) refuse(c *Conn, reserved string, rj rejectReason, code frame.ErrorCode, reason, node string) bool {
	s.m.rejects[rj].Inc()
	s.warn.emit("login refused", "remote", c.remote, "device_id", node, "err", rejectLabels[rj])
	if reserved != "" {
		s.unreserve(reserved, c)
		c.setNodeID("")
	}
	if s.native {
		c.loggedOut = true
		s.closeConn(c, rRejected, code, reason)
		return false
	}
	c.refusals++
	if int(c.refusals) >= s.cfg.MaxBadFrames {
		s.closeConn(c, rRejected, code, reason)
		return false
	}
	_ = c.Send(frame.Frame{Type: frame.TypeError, Code: code, Reason: reason})
	return false
}

// sweepEvery is how often the sweeper looks for timed-out connections.
func (s *Server) sweepEvery() time.Duration {
	d := min(s.cfg.HelloTimeout, s.cfg.IdleTimeout/2) / 4
	return min(max(d, 5*time.Millisecond), time.Second)
}

func (s *Server) sweepLoop(stop <-chan struct{}) {
	t := time.NewTicker(s.sweepEvery())
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			s.sweep(s.now().UnixNano())
		}
	}
}

// sweep closes connections past their hello or idle timeout and pings
// native connections idle for half the idle timeout (go-style §8: gnet has
// no deadlines).
func (s *Server) sweep(now int64) {
	s.sweepMu.Lock()
	defer s.sweepMu.Unlock()
	hello := int64(s.cfg.HelloTimeout)
	idle := int64(s.cfg.IdleTimeout)
	type act struct {
		c    *Conn
		what uint8
	}
	const (
		actHello = iota
		actIdle
		actPing
	)
	var acts []act
	s.conns.each(func(c *Conn) {
		if c.closing() {
			return
		}
		seen := c.lastSeen.Load()
		switch phase := c.phase.Load(); {
		case phase < phaseBound && (phase == phaseNew || !s.native) && now-c.opened > hello:
			acts = append(acts, act{c, actHello})
		case now-seen > idle:
			acts = append(acts, act{c, actIdle})
		case s.native && now-seen > idle/2 && c.pingedFor != seen:
			c.pingedFor = seen
			acts = append(acts, act{c, actPing})
		}
	})
	for _, a := range acts {
		switch a.what {
		case actHello:
			s.m.rejects[rjHelloTimeout].Inc()
			s.m.limitHits[lHelloTimeout].Inc()
			s.warn.emit("login refused", "remote", a.c.remote, "err", "hello_timeout")
			s.closeConn(a.c, rRejected, frame.CodeTimeout, "no hello in time")
		case actIdle:
			s.m.limitHits[lIdleTimeout].Inc()
			s.closeConn(a.c, rIdle, frame.CodeTimeout, "idle timeout")
		case actPing:
			_ = a.c.Send(frame.Frame{Type: frame.TypePing})
		}
	}
}

// stripe is one of the Server's striped locks (Conn.ilock), padded to its
// own cache line.
type stripe struct {
	mu sync.Mutex
	// early: frames held until a connection's welcome (Conn.hold); nil
	// when none are.
	early map[*Conn][]heldSend
	_     [48]byte
}

// connTable holds every open connection for the sweeper and shutdown,
// sharded so that loops accepting at once rarely meet on a lock.
type connTable struct {
	shards [64]connShard
}

type connShard struct {
	// mu guards m.
	mu sync.Mutex
	m  map[uint64]*Conn
}

func (t *connTable) init() {
	for i := range t.shards {
		t.shards[i].m = make(map[uint64]*Conn)
	}
}

func (t *connTable) add(c *Conn) {
	sh := &t.shards[c.id%uint64(len(t.shards))]
	sh.mu.Lock()
	sh.m[c.id] = c
	sh.mu.Unlock()
}

func (t *connTable) remove(c *Conn) {
	sh := &t.shards[c.id%uint64(len(t.shards))]
	sh.mu.Lock()
	delete(sh.m, c.id)
	sh.mu.Unlock()
}

// snapshot returns every open connection.
func (t *connTable) snapshot() []*Conn {
	var out []*Conn
	t.each(func(c *Conn) { out = append(out, c) })
	return out
}

// each calls fn for every connection; fn runs under a shard lock and must
// not block or do I/O.
func (t *connTable) each(fn func(*Conn)) {
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		for _, c := range sh.m {
			fn(c)
		}
		sh.mu.Unlock()
	}
}

func hostOf(remote string) string {
	if h, _, err := net.SplitHostPort(remote); err == nil {
		return h
	}
	return remote
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}
