package iotdasim

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/subgate/subgate/northbound/iotda"
)

// Listener ids given to mochi.
const (
	listenerTCP = "tcp"
	listenerTLS = "tls"
)

type simState int

const (
	stateNew simState = iota
	stateStarted
	stateStopped
	stateClosed
)

// Indexes of Sim.bound.
const (
	boundTCP = iota
	boundTLS
	boundHTTP
)

// Sim is a local IoTDA platform. Create it with New, then Start; Close
// stops everything it started, for good. Stop stops it like Close but
// keeps the platform state (gateways, sub-devices, statuses, list
// versions, change logs, shadows) and the recordings, and Start brings it
// back on the same addresses, so tests can simulate a platform outage.
type Sim struct {
	cfg Config
	// ctl is the outage and delivery-statistics state (control.go).
	ctlOnce   sync.Once
	ctl       *control
	log       *slog.Logger
	now       func() time.Time
	clientCAs *x509.CertPool
	tlsConfig *tls.Config

	inbox chan uplink
	done  chan struct{} // closed by Close

	// lifeMu serialises Start, Stop and Close.
	lifeMu sync.Mutex

	// mu guards the following fields. It is never held while publishing
	// into the broker or while calling into mochi.
	mu             sync.Mutex
	state          simState
	stop           chan struct{} // closed when the current run ends
	bound          [3]string     // resolved listen addresses, by boundTCP...
	server         *mqtt.Server
	listeners      []net.Listener
	httpSrv        *http.Server
	conns          map[net.Conn]struct{}
	gateways       map[string]*gateway
	logins         map[*mqtt.Client]*conn // authenticated, session not yet established
	byClient       map[*mqtt.Client]*conn // established connections
	pending        map[string]*pendingReq
	refused        map[string]iotda.FailedDevice // node id -> refusal
	rec            records
	violations     int64
	changesDropped int64
	changed        chan struct{}

	// Both wait groups belong to the current run and are idle between
	// runs; lifeMu keeps Start from adding while Stop waits.
	connWG sync.WaitGroup // accept loops and connection goroutines
	wg     sync.WaitGroup // platform goroutine and HTTP server
}

// gateway is the platform state of one gateway device.
type gateway struct {
	id       string
	secret   string
	devices  map[string]*subDev // device id -> record
	version  int64
	changes  boundedLog[change]
	lastDrop int64 // version of the newest change dropped from changes
	shadows  map[string]json.RawMessage
	conn     *conn
	connects int
}

// subDev is a sub-device record with the version it was added at.
type subDev struct {
	iotda.DeviceInfo
	addVersion int64
}

func (d *subDev) info() iotda.DeviceInfo {
	out := d.DeviceInfo
	out.ExtensionInfo = append(json.RawMessage(nil), d.ExtensionInfo...)
	return out
}

// change is one entry of a gateway's change log, replayed by sync.
type change struct {
	version int64
	add     bool
	dev     iotda.DeviceInfo
}

// conn is one authenticated MQTT connection of a gateway.
type conn struct {
	gw       string
	cl       *mqtt.Client
	clientID string
	remote   string
	// window holds the times of the last MaxMsgsPerSec publishes, as a
	// ring, for the rate check.
	window []time.Time
	next   int
	subs   map[string]byte // explicit subscriptions and granted QoS
}

// pendingReq is a downstream request waiting for its response.
type pendingReq struct {
	gw   string
	kind iotda.Kind // expected response topic kind
	ch   chan []byte
}

// uplink is one upstream PUBLISH handed from mochi to the platform
// goroutine.
type uplink struct {
	gw      string
	topic   string
	payload []byte
	at      time.Time
}

// New validates cfg and returns a Sim that is not started.
func New(cfg Config) (*Sim, error) {
	cfg.applyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Sim{
		cfg:      cfg,
		log:      cfg.Logger.With("component", "iotdasim"),
		now:      cfg.Clock,
		inbox:    make(chan uplink, cfg.InboxSize),
		done:     make(chan struct{}),
		conns:    map[net.Conn]struct{}{},
		gateways: make(map[string]*gateway, len(cfg.Devices)),
		logins:   map[*mqtt.Client]*conn{},
		byClient: map[*mqtt.Client]*conn{},
		pending:  map[string]*pendingReq{},
		refused:  map[string]iotda.FailedDevice{},
		rec:      newRecords(cfg.MaxRecords),
		changed:  make(chan struct{}),
	}
	for id, secret := range cfg.Devices {
		s.gateways[id] = &gateway{
			id: id, secret: secret,
			devices: map[string]*subDev{},
			changes: boundedLog[change]{max: cfg.MaxRecords},
			shadows: map[string]json.RawMessage{},
		}
	}
	if cfg.TLSListen != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("%w: TLS key pair: %w", ErrConfig, err)
		}
		s.tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		if cfg.ClientCAFile != "" {
			pem, err := os.ReadFile(cfg.ClientCAFile)
			if err != nil {
				return nil, fmt.Errorf("%w: client CA: %w", ErrConfig, err)
			}
			s.clientCAs = x509.NewCertPool()
			if !s.clientCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("%w: client CA file has no certificate", ErrConfig)
			}
			s.tlsConfig.ClientCAs = s.clientCAs
			s.tlsConfig.ClientAuth = tls.VerifyClientCertIfGiven
		}
	}
	return s, nil
}

// Start binds the listeners and starts a fresh broker, the platform
// goroutine and the HTTP API. Addr, TLSAddr and HTTPAddr are valid once it
// returns. After Stop it binds the addresses of the first run again (the
// resolved ports where the Config said :0, so clients reconnect to the
// same address) and continues with the kept state; it fails if one of them
// has been taken meanwhile, and may be retried. After Close it returns
// ErrClosed.
func (s *Sim) Start() error {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	s.mu.Lock()
	state, bound := s.state, s.bound
	s.mu.Unlock()
	switch state {
	case stateStarted:
		return errors.New("iotdasim: already started")
	case stateClosed:
		return ErrClosed
	}
	addr := func(i int, configured string) string {
		if bound[i] != "" {
			return bound[i]
		}
		return configured
	}

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = maxPacketSize
	srv := mqtt.New(&mqtt.Options{
		Capabilities:           caps,
		InlineClient:           true,
		Logger:                 s.cfg.Logger.With("component", "iotdasim_broker"),
		SysTopicResendInterval: 3600,
	})
	if err := srv.AddHook(&hook{s: s, srv: srv}, nil); err != nil {
		return fmt.Errorf("iotdasim: add hook: %w", err)
	}

	var lns, all []net.Listener // all: closed again if Start fails
	closeAll := func() {
		for _, l := range all {
			_ = l.Close()
		}
	}
	listen := func(i int, configured string) (net.Listener, error) {
		a := addr(i, configured)
		l, err := net.Listen("tcp", a)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("iotdasim: listen %s: %w", a, err)
		}
		bound[i] = l.Addr().String()
		all = append(all, l)
		return l, nil
	}
	ln, err := listen(boundTCP, s.cfg.Listen)
	if err != nil {
		return err
	}
	lns = append(lns, ln)
	if s.cfg.TLSListen != "" {
		tln, err := listen(boundTLS, s.cfg.TLSListen)
		if err != nil {
			return err
		}
		lns = append(lns, tls.NewListener(tln, s.tlsConfig))
	}
	var hln net.Listener
	var hs *http.Server
	if s.cfg.HTTPListen != "" {
		if hln, err = listen(boundHTTP, s.cfg.HTTPListen); err != nil {
			return err
		}
		hs = &http.Server{
			Handler:           s.httpHandler(),
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       30 * time.Second,
			WriteTimeout:      s.cfg.CommandTimeout + 10*time.Second,
			IdleTimeout:       60 * time.Second,
			MaxHeaderBytes:    16 << 10,
			ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		}
	}
	if err := srv.Serve(); err != nil {
		closeAll()
		return fmt.Errorf("iotdasim: serve: %w", err)
	}

	stop := make(chan struct{})
	s.mu.Lock()
	s.server, s.listeners, s.httpSrv, s.bound = srv, lns, hs, bound
	s.state, s.stop = stateStarted, stop
	s.mu.Unlock()
	for i, l := range lns {
		id := listenerTCP
		if i == 1 {
			id = listenerTLS
		}
		s.connWG.Add(1)
		go s.acceptLoop(id, l)
	}
	s.wg.Add(1)
	go s.platformLoop(stop)
	if hs != nil {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := hs.Serve(hln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("http server stopped", "err", err)
			}
		}()
	}
	s.log.Info("started", "remote", ln.Addr().String())
	return nil
}

// acceptLoop accepts connections on ln and hands each to mochi. It owns
// one connWG count; every connection goroutine owns another.
func (s *Sim) acceptLoop(id string, ln net.Listener) {
	defer s.connWG.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.state != stateStarted {
			s.mu.Unlock()
			_ = c.Close()
			return
		}
		s.conns[c] = struct{}{}
		srv := s.server
		s.connWG.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.connWG.Done()
			defer func() {
				_ = c.Close()
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
			}()
			// Bound the wait for CONNECT (and the TLS handshake); mochi
			// replaces the deadline with 1.5 x keepalive after CONNECT.
			_ = c.SetDeadline(time.Now().Add(s.cfg.ConnectTimeout))
			if err := srv.EstablishConnection(id, c); err != nil {
				s.log.Debug("connection ended", "remote", c.RemoteAddr().String(), "err", err)
			}
		}()
	}
}

// Addr returns the plain MQTT listener address ("" before the first
// Start). It stays the same across Stop and Start.
func (s *Sim) Addr() string { return s.boundAddr(boundTCP) }

// TLSAddr returns the MQTTS listener address ("" when off).
func (s *Sim) TLSAddr() string { return s.boundAddr(boundTLS) }

// HTTPAddr returns the HTTP API address ("" when off).
func (s *Sim) HTTPAddr() string { return s.boundAddr(boundHTTP) }

func (s *Sim) boundAddr(i int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bound[i]
}

// Stop ends the current run like Close: it stops the listeners, drops
// every connection, stops the broker, the platform goroutine and the HTTP
// API, and returns when all of them have exited. Pending downstream
// requests fail with ErrStopped, and downstream calls fail with ErrStopped
// until Start. Unlike Close it keeps the platform state and the
// recordings: upstream publishes the broker accepted before the drop are
// still processed and recorded. Console calls (AddDevice, DeleteDevice,
// SetShadow, RefuseAdd) keep working; the gateway learns of changes by
// sync. Connected reports false for every gateway and WaitFor callers
// re-evaluate their conditions; they keep waiting. Stop is idempotent and
// a no-op before Start; Start continues the Sim.
func (s *Sim) Stop() error {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	s.mu.Lock()
	if s.state != stateStarted {
		s.mu.Unlock()
		return nil
	}
	s.state = stateStopped
	s.mu.Unlock()
	err := s.shutdown()
	s.log.Info("stopped; state kept")
	return err
}

// Close stops the Sim for good: as Stop, but pending downstream requests
// and WaitFor fail with ErrClosed, and Start is refused. It is idempotent
// and may follow Stop.
func (s *Sim) Close() error {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	s.mu.Lock()
	if s.state == stateClosed {
		s.mu.Unlock()
		return nil
	}
	started := s.state == stateStarted
	s.state = stateClosed
	close(s.done)
	s.mu.Unlock()
	var err error
	if started {
		err = s.shutdown()
	}
	s.log.Info("closed")
	return err
}

// shutdown ends the current run after Stop or Close has moved the state
// away from stateStarted, which makes accept loops refuse new connections.
// The platform goroutine runs until every connection has ended, so that an
// upstream publish the broker accepted (and acknowledged) is processed;
// then it drains the inbox and exits. Call with lifeMu held.
func (s *Sim) shutdown() error {
	s.mu.Lock()
	lns, srv, hs, stop := s.listeners, s.server, s.httpSrv, s.stop
	conns := make([]net.Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()

	var errs []error
	for _, ln := range lns {
		if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	for _, c := range conns {
		_ = c.Close()
	}
	s.connWG.Wait()
	close(stop) // no connection is left to feed the inbox
	if err := srv.Close(); err != nil {
		errs = append(errs, err)
	}
	if hs != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := hs.Shutdown(ctx); err != nil {
			errs = append(errs, err)
			_ = hs.Close()
		}
		cancel()
	}
	s.wg.Wait()

	s.mu.Lock()
	s.listeners, s.server, s.httpSrv, s.stop = nil, nil, nil, nil
	// mochi calls OnDisconnect for every established session; a login
	// whose CONNACK failed never got that far.
	clear(s.logins)
	clear(s.byClient)
	for _, g := range s.gateways {
		g.conn = nil
	}
	s.notifyLocked()
	s.mu.Unlock()
	return errors.Join(errs...)
}

// publish sends a downstream message at QoS 1 through the broker's inline
// client. It must be called without s.mu held.
func (s *Sim) publish(topic string, payload []byte) error {
	s.mu.Lock()
	srv, err := s.server, s.usableLocked()
	s.mu.Unlock()
	if err != nil {
		return err
	}
	if err := srv.Publish(topic, payload, false, 1); err != nil {
		return fmt.Errorf("iotdasim: publish %s: %w", topic, err)
	}
	return nil
}

// kick drops a client connection.
func kick(cl *mqtt.Client, reason error) {
	if cl.Properties.ProtocolVersion == 5 {
		// A v5 client may be told why; a v3 client only sees the close.
		_ = cl.WritePacket(packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Disconnect},
			ReasonCode:  packets.ErrAdministrativeAction.Code,
		})
	}
	cl.Stop(reason)
}

// newID returns a random 36-character id in UUID form, like the ids the
// platform generates (iotda-protocol §0).
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}
