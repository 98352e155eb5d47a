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
	stateClosed
)

// Sim is a local IoTDA platform. Create it with New, then Start; Close
// stops everything it started. A closed Sim cannot be restarted: create a
// new one with the same Config (the same Listen address works again).
type Sim struct {
	cfg       Config
	log       *slog.Logger
	now       func() time.Time
	clientCAs *x509.CertPool
	tlsConfig *tls.Config

	inbox chan uplink
	done  chan struct{}

	// mu guards the following fields. It is never held while publishing
	// into the broker or while calling into mochi.
	mu             sync.Mutex
	state          simState
	server         *mqtt.Server
	listeners      []net.Listener
	httpSrv        *http.Server
	httpLn         net.Listener
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

// Start binds the listeners and starts the broker, the platform goroutine
// and the HTTP API. Addr and HTTPAddr are valid once it returns.
func (s *Sim) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch s.state {
	case stateStarted:
		return errors.New("iotdasim: already started")
	case stateClosed:
		return ErrClosed
	}

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = maxPacketSize
	srv := mqtt.New(&mqtt.Options{
		Capabilities:           caps,
		InlineClient:           true,
		Logger:                 s.cfg.Logger.With("component", "iotdasim_broker"),
		SysTopicResendInterval: 3600,
	})
	if err := srv.AddHook(&hook{s: s}, nil); err != nil {
		return fmt.Errorf("iotdasim: add hook: %w", err)
	}

	var lns []net.Listener
	closeAll := func() {
		for _, ln := range lns {
			_ = ln.Close()
		}
	}
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("iotdasim: listen %s: %w", s.cfg.Listen, err)
	}
	lns = append(lns, ln)
	if s.cfg.TLSListen != "" {
		tln, err := net.Listen("tcp", s.cfg.TLSListen)
		if err != nil {
			closeAll()
			return fmt.Errorf("iotdasim: listen %s: %w", s.cfg.TLSListen, err)
		}
		lns = append(lns, tls.NewListener(tln, s.tlsConfig))
	}
	var hln net.Listener
	if s.cfg.HTTPListen != "" {
		hln, err = net.Listen("tcp", s.cfg.HTTPListen)
		if err != nil {
			closeAll()
			return fmt.Errorf("iotdasim: listen %s: %w", s.cfg.HTTPListen, err)
		}
	}
	if err := srv.Serve(); err != nil {
		closeAll()
		if hln != nil {
			_ = hln.Close()
		}
		return fmt.Errorf("iotdasim: serve: %w", err)
	}

	s.server, s.listeners, s.state = srv, lns, stateStarted
	for i, l := range lns {
		id := listenerTCP
		if i == 1 {
			id = listenerTLS
		}
		s.connWG.Add(1)
		go s.acceptLoop(id, l)
	}
	s.wg.Add(1)
	go s.platformLoop()
	if hln != nil {
		s.httpLn = hln
		s.httpSrv = &http.Server{
			Handler:           s.httpHandler(),
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       30 * time.Second,
			WriteTimeout:      s.cfg.CommandTimeout + 10*time.Second,
			IdleTimeout:       60 * time.Second,
			MaxHeaderBytes:    16 << 10,
			ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := s.httpSrv.Serve(hln); err != nil && !errors.Is(err, http.ErrServerClosed) {
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

// Addr returns the plain MQTT listener address ("" before Start).
func (s *Sim) Addr() string { return s.listenerAddr(0) }

// TLSAddr returns the MQTTS listener address ("" when off).
func (s *Sim) TLSAddr() string { return s.listenerAddr(1) }

func (s *Sim) listenerAddr(i int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i < len(s.listeners) {
		return s.listeners[i].Addr().String()
	}
	return ""
}

// HTTPAddr returns the HTTP API address ("" when off).
func (s *Sim) HTTPAddr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.httpLn != nil {
		return s.httpLn.Addr().String()
	}
	return ""
}

// Close stops the listeners, drops every connection, stops the broker,
// the platform goroutine and the HTTP API, and returns when all of them
// have exited. Pending downstream requests fail with ErrClosed. It is
// idempotent.
func (s *Sim) Close() error {
	s.mu.Lock()
	if s.state == stateClosed {
		s.mu.Unlock()
		return nil
	}
	started := s.state == stateStarted
	s.state = stateClosed
	close(s.done)
	lns, srv, hs := s.listeners, s.server, s.httpSrv
	conns := make([]net.Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.notifyLocked()
	s.mu.Unlock()
	if !started {
		return nil
	}

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
	s.log.Info("stopped")
	return errors.Join(errs...)
}

// publish sends a downstream message at QoS 1 through the broker's inline
// client. It must be called without s.mu held.
func (s *Sim) publish(topic string, payload []byte) error {
	s.mu.Lock()
	srv, state := s.server, s.state
	s.mu.Unlock()
	switch state {
	case stateNew:
		return ErrNotStarted
	case stateClosed:
		return ErrClosed
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
