// Package northbound owns subgate's single MQTT session with IoTDA (or any
// MQTT broker that speaks its topics).
//
// A Session runs one goroutine (Run) that connects, subscribes, watches the
// connection and reconnects with exponential backoff and jitter. It uses a
// clean session and no paho auto-reconnect (go-style §10): a lost connection
// fails every pending publish, so a nil result from Publish or Pending.Wait
// means a PUBACK was seen on the connection that carried the message. The
// durable copy of uplink data lives in the store's outbox, never in paho.
//
// Downlink messages are copied in the paho callback and handed over, in the
// order they arrived, through a bounded channel (Messages); when it is full
// the message is dropped, counted and logged, and the callback returns at
// once. Publish and PublishAsync are
// safe for concurrent use.
package northbound

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/subgate/subgate/northbound/iotda"
)

// Errors returned by a Session.
var (
	// ErrNotConnected means no MQTT connection is up right now.
	ErrNotConnected = errors.New("northbound: not connected")
	// ErrTooLarge means a payload is above the platform's publish limit.
	ErrTooLarge = errors.New("northbound: payload above the 1 MB publish limit")
	// ErrBadCredentials means the broker refused the login (CONNACK 4 or 5).
	ErrBadCredentials = errors.New("northbound: credentials refused")
)

// Config configures a Session. Durations of zero take the defaults.
type Config struct {
	// Server is tcp://host:port or ssl://host:port.
	Server string
	// DeviceID is the gateway's own device id.
	DeviceID string
	// Secret is the device secret for secret authentication (§1.2). Empty
	// with CertFile set means X.509 authentication (§1.3).
	Secret string
	// CheckTimestamp is the signType of the client id: 0 or 1 (§1.2).
	CheckTimestamp int
	// CAFile is a PEM bundle that verifies the server; empty means the
	// system roots.
	CAFile string
	// ServerName overrides the name checked in the server certificate.
	ServerName string
	// InsecureSkipVerify disables server verification. It logs a warning
	// on every connect.
	InsecureSkipVerify bool
	// CertFile and KeyFile are the client certificate for X.509 login.
	CertFile, KeyFile string
	KeepAlive         time.Duration // 30 s - 1200 s (§1.4); default 120 s
	ConnectTimeout    time.Duration // default 10 s
	WriteTimeout      time.Duration // default 10 s
	MinBackoff        time.Duration // default 1 s
	MaxBackoff        time.Duration // default 30 s
	// Subscriptions are subscribed at QoS 1 after every connect.
	Subscriptions []string
	// DownlinkQueue bounds Messages (default 4096).
	DownlinkQueue int
	// OnUp is called on the Run goroutine after each connect and
	// subscription; OnDown after each loss. Both must not block.
	OnUp   func()
	OnDown func(err error)
	// OnPublishWritten, when set, is called each time a PUBLISH packet
	// has been written to the connection's socket (the quota governor
	// counts on the wire). It runs on the MQTT client's writer and must
	// not block.
	OnPublishWritten func()
	// Now returns the current time (tests); default time.Now.
	Now func() time.Time
}

// LogValue keeps the secret out of logs.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("server", c.Server),
		slog.String("device_id", c.DeviceID),
		slog.Bool("secret_set", c.Secret != ""),
		slog.Bool("x509", c.CertFile != ""),
	)
}

func (c *Config) setDefaults() {
	if c.KeepAlive == 0 {
		c.KeepAlive = 120 * time.Second
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = 10 * time.Second
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.MinBackoff == 0 {
		c.MinBackoff = time.Second
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = 30 * time.Second
	}
	if c.DownlinkQueue == 0 {
		c.DownlinkQueue = 4096
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Validate checks the configuration; errors name the config key.
func (c *Config) Validate() error {
	u, err := url.Parse(c.Server)
	if err != nil || (u.Scheme != "tcp" && u.Scheme != "ssl" && u.Scheme != "tls" && u.Scheme != "mqtts") || u.Host == "" {
		return fmt.Errorf("northbound.server: %q is not tcp://host:port or ssl://host:port", c.Server)
	}
	if _, _, err := net.SplitHostPort(u.Host); err != nil {
		return fmt.Errorf("northbound.server: %q: %v", c.Server, err)
	}
	if c.DeviceID == "" {
		return errors.New("northbound.device_id: required")
	}
	if c.Secret == "" && c.CertFile == "" {
		return errors.New("northbound.secret: required unless northbound.cert_file is set")
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return errors.New("northbound.cert_file and northbound.key_file: set both or neither")
	}
	if c.CertFile != "" && u.Scheme == "tcp" {
		return errors.New("northbound.cert_file: X.509 login needs an ssl:// server")
	}
	if c.CheckTimestamp != 0 && c.CheckTimestamp != 1 {
		return fmt.Errorf("northbound.check_timestamp: %d is not 0 or 1", c.CheckTimestamp)
	}
	if c.KeepAlive != 0 && (c.KeepAlive < iotda.MinKeepAlive || c.KeepAlive > iotda.MaxKeepAlive) {
		return fmt.Errorf("northbound.keepalive: %s is outside 30s-1200s (iotda-protocol §1.4)", c.KeepAlive)
	}
	if c.MinBackoff < 0 || c.MaxBackoff < 0 || (c.MaxBackoff != 0 && c.MinBackoff > c.MaxBackoff) {
		return errors.New("northbound.min_backoff/max_backoff: need 0 <= min_backoff <= max_backoff")
	}
	if len(c.Subscriptions) > 50 {
		return fmt.Errorf("northbound: %d subscriptions exceed the safe limit of 50 (iotda-protocol §1.6)", len(c.Subscriptions))
	}
	return nil
}

// Message is one downlink publish, copied out of paho.
type Message struct {
	Topic   string
	Payload []byte
}

// Session is the gateway's MQTT session.
type Session struct {
	cfg     Config
	log     *slog.Logger
	m       *sessionMetrics
	tlsConf *tls.Config
	msgs    chan Message

	// mu guards the following fields.
	mu      sync.Mutex
	client  mqtt.Client
	lastErr error
	since   time.Time

	connected atomic.Bool
	lost      chan error // connection-loss signal from paho, capacity 1
	dropLog   rateLog
}

// New validates cfg and returns a Session. It starts nothing.
func New(cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Session, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Session{
		cfg:  cfg,
		log:  log.With("component", "northbound"),
		m:    newSessionMetrics(reg),
		msgs: make(chan Message, cfg.DownlinkQueue),
		lost: make(chan error, 1),
	}
	if tc, err := s.buildTLS(); err != nil {
		return nil, err
	} else {
		s.tlsConf = tc
	}
	return s, nil
}

func (s *Session) buildTLS() (*tls.Config, error) {
	u, _ := url.Parse(s.cfg.Server)
	if u.Scheme == "tcp" {
		return nil, nil
	}
	host, _, _ := net.SplitHostPort(u.Host)
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host}
	if s.cfg.ServerName != "" {
		tc.ServerName = s.cfg.ServerName
	}
	if s.cfg.CAFile != "" {
		pem, err := os.ReadFile(s.cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("northbound.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("northbound.ca_file: %s holds no PEM certificate", s.cfg.CAFile)
		}
		tc.RootCAs = pool
	}
	if s.cfg.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(s.cfg.CertFile, s.cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("northbound.cert_file: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	tc.InsecureSkipVerify = s.cfg.InsecureSkipVerify
	return tc, nil
}

// Messages returns the downlink channel. It is never closed.
func (s *Session) Messages() <-chan Message { return s.msgs }

// Connected reports whether the MQTT connection is up.
func (s *Session) Connected() bool { return s.connected.Load() }

// State returns whether the session is connected, since when it is in that
// state, and the error of the last failed attempt or loss.
func (s *Session) State() (up bool, since time.Time, lastErr error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.connected.Load(), s.since, s.lastErr
}

// Run connects and keeps the session up until ctx is done. It returns nil
// after a clean disconnect, once every goroutine it started has exited.
func (s *Session) Run(ctx context.Context) error {
	attempt := 0
	for {
		if ctx.Err() != nil {
			return nil
		}
		client, err := s.connect(ctx)
		if err != nil {
			s.setState(false, err)
			s.m.connects(err)
			wait := s.backoff(attempt)
			if errors.Is(err, ErrBadCredentials) {
				// Retrying bad credentials quickly never helps (§1.5):
				// wait the maximum every time.
				wait = s.cfg.MaxBackoff
			}
			attempt++
			s.log.Warn("connect failed", "err", err, "retry_in", wait.Round(time.Millisecond), "n", attempt)
			if !sleepCtx(ctx, wait) {
				return nil
			}
			continue
		}
		s.m.connects(nil)
		attempt = 0
		s.mu.Lock()
		s.client = client
		s.mu.Unlock()
		s.setState(true, nil)
		s.log.Info("connected", "server", s.cfg.Server, "device_id", s.cfg.DeviceID)
		if s.cfg.OnUp != nil {
			s.cfg.OnUp()
		}

		var lostErr error
		select {
		case <-ctx.Done():
		case lostErr = <-s.lost:
		}
		s.mu.Lock()
		s.client = nil
		s.mu.Unlock()
		if lostErr == nil {
			s.setState(false, nil)
			client.Disconnect(250)
			s.m.disconnect("shutdown")
			if s.cfg.OnDown != nil {
				s.cfg.OnDown(context.Canceled)
			}
			s.log.Info("disconnected")
			return nil
		}
		s.setState(false, lostErr)
		s.m.disconnect("lost")
		// paho's own goroutines are finished with this client after the
		// loss callback; Disconnect makes sure of it.
		client.Disconnect(0)
		s.log.Warn("connection lost", "err", lostErr)
		if s.cfg.OnDown != nil {
			s.cfg.OnDown(lostErr)
		}
		if !sleepCtx(ctx, s.backoff(0)) {
			return nil
		}
	}
}

func (s *Session) setState(up bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.connected.Load() != up || s.since.IsZero() {
		s.since = s.cfg.Now()
	}
	s.connected.Store(up)
	s.lastErr = err
	if up {
		s.m.connected.Set(1)
	} else {
		s.m.connected.Set(0)
	}
}

// backoff returns the wait before attempt n: exponential from MinBackoff,
// capped at MaxBackoff, with full jitter over the upper fifth.
func (s *Session) backoff(n int) time.Duration {
	if n > 16 {
		n = 16
	}
	d := s.cfg.MinBackoff << n
	if d <= 0 || d > s.cfg.MaxBackoff {
		d = s.cfg.MaxBackoff
	}
	jitter := time.Duration(rand.Int64N(int64(d)/5 + 1))
	return d - d/5 + jitter
}

func (s *Session) connect(ctx context.Context) (mqtt.Client, error) {
	now := s.cfg.Now()
	ts := iotda.Timestamp(now)
	opts := mqtt.NewClientOptions()
	server := s.cfg.Server
	if u, _ := url.Parse(server); u != nil && u.Scheme != "tcp" {
		server = "ssl://" + u.Host
	}
	opts.AddBroker(server)
	// Client id and password come from the same timestamp (§1.2 step 4).
	opts.SetClientID(iotda.ClientID(s.cfg.DeviceID, s.cfg.CheckTimestamp, ts))
	opts.SetUsername(s.cfg.DeviceID)
	if s.cfg.Secret != "" {
		opts.SetPassword(iotda.Password(s.cfg.Secret, ts))
	}
	opts.SetCleanSession(true)
	opts.SetAutoReconnect(false)
	opts.SetConnectRetry(false)
	// In order: onMessage never blocks (copy, non-blocking send), so
	// ordered delivery costs nothing and keeps platform events such as
	// versioned sub-device notifications in the order they were sent;
	// unordered delivery (a goroutine per message) reordered them.
	opts.SetOrderMatters(true)
	opts.SetKeepAlive(s.cfg.KeepAlive)
	opts.SetPingTimeout(10 * time.Second)
	opts.SetConnectTimeout(s.cfg.ConnectTimeout)
	opts.SetWriteTimeout(s.cfg.WriteTimeout)
	opts.SetProtocolVersion(4)
	opts.SetCustomOpenConnectionFn(dialer(s.cfg.OnPublishWritten))
	if s.tlsConf != nil {
		if s.cfg.InsecureSkipVerify {
			s.log.Warn("northbound TLS server verification is OFF (northbound.insecure_skip_verify)")
		}
		opts.SetTLSConfig(s.tlsConf.Clone())
	}
	opts.SetDefaultPublishHandler(s.onMessage)
	opts.SetConnectionLostHandler(func(_ mqtt.Client, err error) {
		if err == nil {
			err = errors.New("connection closed")
		}
		select {
		case s.lost <- err:
		default:
		}
	})
	// Drain a stale loss signal from an earlier connection.
	select {
	case <-s.lost:
	default:
	}

	client := mqtt.NewClient(opts)
	tok := client.Connect()
	if err := waitToken(ctx, tok, s.cfg.ConnectTimeout+time.Second); err != nil {
		client.Disconnect(0)
		if ct, ok := tok.(*mqtt.ConnectToken); ok {
			switch ct.ReturnCode() {
			case 4, 5:
				return nil, fmt.Errorf("%w: CONNACK %d: %v", ErrBadCredentials, ct.ReturnCode(), err)
			}
		}
		return nil, fmt.Errorf("northbound: connect %s: %w", s.cfg.Server, err)
	}
	filters := make(map[string]byte, len(s.cfg.Subscriptions))
	for _, t := range s.cfg.Subscriptions {
		filters[t] = 1
	}
	if len(filters) > 0 {
		stok := client.SubscribeMultiple(filters, nil)
		if err := waitToken(ctx, stok, s.cfg.WriteTimeout); err != nil {
			client.Disconnect(0)
			return nil, fmt.Errorf("northbound: subscribe: %w", err)
		}
		if st, ok := stok.(*mqtt.SubscribeToken); ok {
			for topic, code := range st.Result() {
				if code == 0x80 {
					client.Disconnect(0)
					return nil, fmt.Errorf("northbound: subscription to %q refused", topic)
				}
			}
		}
	}
	return client, nil
}

// onMessage runs on a paho goroutine: copy, hand over without blocking, return.
func (s *Session) onMessage(_ mqtt.Client, m mqtt.Message) {
	msg := Message{Topic: m.Topic(), Payload: append([]byte(nil), m.Payload()...)}
	select {
	case s.msgs <- msg:
		s.m.downlink.Inc()
	default:
		s.m.downlinkDropped.Inc()
		if n, ok := s.dropLog.allow(s.cfg.Now()); ok {
			s.log.Warn("downlink queue full, message dropped", "topic", msg.Topic, "n", n, "limit", cap(s.msgs))
		}
	}
}

// Pending is a publish in flight.
type Pending struct {
	tok     mqtt.Token
	start   time.Time
	s       *Session
	kind    string
	timeout time.Duration
}

// Wait blocks until the PUBACK arrived (nil), the connection failed, or ctx
// ended.
func (p *Pending) Wait(ctx context.Context) error {
	err := waitToken(ctx, p.tok, p.timeout)
	p.s.m.published(p.kind, err, p.s.cfg.Now().Sub(p.start))
	return err
}

// PublishAsync sends payload on topic at QoS 1 and returns at once. kind is
// a bounded label for metrics ("batch_properties", "message", ...).
func (s *Session) PublishAsync(kind, topic string, payload []byte) (*Pending, error) {
	if len(payload) > iotda.MaxPublishSize {
		s.m.published(kind, ErrTooLarge, 0)
		return nil, ErrTooLarge
	}
	s.mu.Lock()
	c := s.client
	s.mu.Unlock()
	if c == nil || !s.connected.Load() {
		return nil, ErrNotConnected
	}
	tok := c.Publish(topic, 1, false, payload)
	// The PUBACK wait is bounded: keepalive detects a dead link within
	// 1.5 x keepalive, after which paho fails the token.
	return &Pending{tok: tok, start: s.cfg.Now(), s: s, kind: kind, timeout: 2*s.cfg.KeepAlive + s.cfg.WriteTimeout}, nil
}

// Publish sends payload on topic at QoS 1 and waits for the PUBACK.
func (s *Session) Publish(ctx context.Context, kind, topic string, payload []byte) error {
	p, err := s.PublishAsync(kind, topic, payload)
	if err != nil {
		return err
	}
	return p.Wait(ctx)
}

// Subscribe adds a subscription on the live connection (custom topics). It
// is not remembered: put permanent topics in Config.Subscriptions.
func (s *Session) Subscribe(ctx context.Context, topic string) error {
	s.mu.Lock()
	c := s.client
	s.mu.Unlock()
	if c == nil {
		return ErrNotConnected
	}
	return waitToken(ctx, c.Subscribe(topic, 1, nil), s.cfg.WriteTimeout)
}

func waitToken(ctx context.Context, t mqtt.Token, timeout time.Duration) error {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-t.Done():
		return t.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return fmt.Errorf("northbound: no answer within %s", timeout)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// rateLog lets a repeated warning through at most once per 10 s and says
// how many were suppressed.
type rateLog struct {
	mu   sync.Mutex
	last time.Time
	n    int
}

func (r *rateLog) allow(now time.Time) (int, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n++
	if now.Sub(r.last) < 10*time.Second {
		return 0, false
	}
	n := r.n
	r.n, r.last = 0, now
	return n, true
}

// TopicDevice returns the device id of an $oc topic, for logs.
func TopicDevice(topic string) string {
	rest, ok := strings.CutPrefix(topic, "$oc/devices/")
	if !ok {
		return ""
	}
	id, _, _ := strings.Cut(rest, "/")
	return id
}
