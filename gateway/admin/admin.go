// Package admin is subgate's operations HTTP server: health and readiness
// probes, the Prometheus /metrics endpoint, optional pprof pages and a small
// JSON API under /api/v1 to list, inspect, delete and disconnect sub-devices
// and to provision device token secrets. docs/admin-api.md is its reference.
//
// Security: the server listens on loopback by default. Listening beyond
// loopback requires a bearer token (admin.token_file in the config); when a
// token is configured every route except /healthz and /readyz requires it,
// compared in constant time. Neither tokens nor device secrets are ever
// logged; a generated device secret is returned exactly once, in the
// response that created it.
//
// Concurrency: New builds everything; Listen binds; Serve runs the server
// until its context ends and returns only after the serving goroutine exited.
// The Backend is called from the HTTP handler goroutines, concurrently, and
// must be safe for that. SetDraining may be called from any goroutine.
//
// Bounds: request headers (MaxHeaderBytes, ReadHeaderTimeout), request bodies
// (MaxBodyBytes), concurrent API requests (MaxInFlight, answered 503 "busy"),
// page size (MaxPageLimit) and backend calls (BackendTimeout). Every answer
// is counted in subgate_admin_requests_total{route,code}, where route is the
// matched route pattern or "other", so the label set stays small.
package admin

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/subgate/subgate/subdevice"
)

// Backend is what the admin server needs from the gateway. Every method is
// called from HTTP handler goroutines, possibly concurrently.
type Backend interface {
	// Devices returns one page of the records matching f, sorted by device
	// id, and the total number of matches.
	Devices(f subdevice.Filter, offset, limit int) ([]subdevice.Device, int)
	// Device returns the record whose device id or node id is id.
	Device(id string) (subdevice.Device, bool)
	// Online reports whether the device has a live connection.
	Online(deviceID string) bool
	// DeleteDevice asks the platform to delete the device and returns when
	// the platform answered or ctx ended. Errors may wrap ErrNotFound,
	// ErrUnavailable or ErrRejected to choose the HTTP answer.
	DeleteDevice(ctx context.Context, id string) error
	// Kick closes the device's connection; false when it has none.
	Kick(id string) bool
	// ProvisionToken stores secret as the token secret of node nodeID.
	ProvisionToken(ctx context.Context, nodeID string, secret []byte) error
	// RevokeToken removes the token secret of node nodeID.
	RevokeToken(ctx context.Context, nodeID string) error
	// Ready is false, with a reason, while the northbound is down or the
	// store is closed.
	Ready() (ok bool, reason string)
	// Status is a JSON-able summary: northbound state, counts, outbox depth,
	// uptime.
	Status() any
	// Config is the effective configuration with secrets already redacted.
	Config() any
	// OTAJobs returns one page of the OTA jobs in state (every state when
	// ""), oldest first, and the total number of matches.
	OTAJobs(state string, offset, limit int) ([]OTAJob, int)
	// CancelOTAJob cancels an unfinished OTA job and returns it as it
	// ended. Errors may wrap ErrNotFound or ErrConflict (already finished).
	CancelOTAJob(ctx context.Context, id string) (OTAJob, error)
}

// Errors a Backend may return (wrapped) to select the HTTP answer. Any other
// error is answered 500, and context.DeadlineExceeded 504.
var (
	// ErrNotFound means the device or node is unknown: 404.
	ErrNotFound = errors.New("admin: not found")
	// ErrUnavailable means the gateway cannot do it now, e.g. the
	// northbound is down or the store is closed: 503.
	ErrUnavailable = errors.New("admin: unavailable")
	// ErrRejected means the platform refused the request: 502.
	ErrRejected = errors.New("admin: rejected by the platform")
)

// Errors of New, Listen and Serve.
var (
	// ErrTokenRequired is returned by New when Listen is not loopback-only
	// and no token is configured.
	ErrTokenRequired = errors.New("admin: a bearer token (admin.token_file) is required when admin.listen is not a loopback address")
	// ErrBadOptions wraps every other invalid option.
	ErrBadOptions = errors.New("admin: invalid options")
	// ErrServing is returned by Listen or Serve when called a second time.
	ErrServing = errors.New("admin: server already listening or serving")
)

// Defaults applied by New to zero fields of Options.
const (
	DefaultListen            = "127.0.0.1:9100"
	DefaultReadHeaderTimeout = 5 * time.Second
	DefaultReadTimeout       = 30 * time.Second
	// DefaultWriteTimeout exceeds DefaultBackendTimeout and pprof's default
	// 30 s CPU profile.
	DefaultWriteTimeout    = 60 * time.Second
	DefaultIdleTimeout     = 120 * time.Second
	DefaultMaxHeaderBytes  = 16 << 10
	DefaultMaxBodyBytes    = 64 << 10
	DefaultMaxInFlight     = 64
	DefaultBackendTimeout  = 30 * time.Second
	DefaultShutdownTimeout = 5 * time.Second
	DefaultPageLimit       = 100
	DefaultMaxPageLimit    = 1000
)

// Token and secret length bounds.
const (
	// MinTokenLen is the shortest accepted admin bearer token.
	MinTokenLen = 16
	// MaxTokenLen is the longest accepted admin bearer token.
	MaxTokenLen = 4096
	// MinSecretLen and MaxSecretLen bound a device token secret given in a
	// PUT /api/v1/tokens/{node_id} body.
	MinSecretLen = 16
	MaxSecretLen = 256
	// GeneratedSecretBytes is the entropy of a generated secret; it is
	// returned hex-encoded and that hex string is the secret.
	GeneratedSecretBytes = 32
)

// Options configures the server. Zero fields take the defaults above.
type Options struct {
	// Listen is the TCP address to bind (default 127.0.0.1:9100).
	Listen string
	// Token is the bearer token (from admin.token_file); surrounding white
	// space is ignored. Required when Listen is not loopback-only.
	Token string
	// Pprof mounts /debug/pprof/ behind the token like the API.
	Pprof bool
	// Registry is served on /metrics and receives the admin metrics. When
	// nil, /metrics answers 404 and the admin metrics are kept private.
	Registry *prometheus.Registry
	// Logger receives lifecycle logs (Info) and the access log (Debug).
	Logger *slog.Logger

	// HTTP server bounds.
	ReadHeaderTimeout, ReadTimeout, WriteTimeout, IdleTimeout time.Duration
	MaxHeaderBytes                                            int
	// MaxBodyBytes bounds a request body; a larger one is answered 413.
	MaxBodyBytes int64
	// MaxInFlight bounds concurrent requests outside /healthz and /readyz;
	// more are answered 503 "busy".
	MaxInFlight int
	// BackendTimeout bounds DeleteDevice, ProvisionToken and RevokeToken.
	// It must be below WriteTimeout.
	BackendTimeout time.Duration
	// ShutdownTimeout bounds the graceful shutdown when Serve's context ends.
	ShutdownTimeout time.Duration
	// MaxPageLimit is the largest page GET /api/v1/devices serves.
	MaxPageLimit int
}

func (o *Options) setDefaults() {
	if o.Listen == "" {
		o.Listen = DefaultListen
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	setDur(&o.ReadHeaderTimeout, DefaultReadHeaderTimeout)
	setDur(&o.ReadTimeout, DefaultReadTimeout)
	setDur(&o.WriteTimeout, DefaultWriteTimeout)
	setDur(&o.IdleTimeout, DefaultIdleTimeout)
	setDur(&o.BackendTimeout, DefaultBackendTimeout)
	setDur(&o.ShutdownTimeout, DefaultShutdownTimeout)
	if o.MaxHeaderBytes == 0 {
		o.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if o.MaxBodyBytes == 0 {
		o.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if o.MaxInFlight == 0 {
		o.MaxInFlight = DefaultMaxInFlight
	}
	if o.MaxPageLimit == 0 {
		o.MaxPageLimit = DefaultMaxPageLimit
	}
}

func setDur(d *time.Duration, def time.Duration) {
	if *d == 0 {
		*d = def
	}
}

func (o *Options) validate() error {
	if _, _, err := net.SplitHostPort(o.Listen); err != nil {
		return fmt.Errorf("%w: admin.listen %q: %v", ErrBadOptions, o.Listen, err)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"read_header_timeout", o.ReadHeaderTimeout}, {"read_timeout", o.ReadTimeout},
		{"write_timeout", o.WriteTimeout}, {"idle_timeout", o.IdleTimeout},
		{"backend_timeout", o.BackendTimeout}, {"shutdown_timeout", o.ShutdownTimeout},
	} {
		if d.v < 0 {
			return fmt.Errorf("%w: %s %v is negative", ErrBadOptions, d.name, d.v)
		}
	}
	if o.BackendTimeout >= o.WriteTimeout {
		return fmt.Errorf("%w: backend_timeout %v must be below write_timeout %v", ErrBadOptions, o.BackendTimeout, o.WriteTimeout)
	}
	if o.MaxHeaderBytes < 0 || o.MaxBodyBytes < 0 || o.MaxInFlight < 0 || o.MaxPageLimit < 0 {
		return fmt.Errorf("%w: max_header_bytes, max_body_bytes, max_in_flight and max_page_limit must not be negative", ErrBadOptions)
	}
	if o.Token != "" && (len(o.Token) < MinTokenLen || len(o.Token) > MaxTokenLen) {
		return fmt.Errorf("%w: the admin token must be %d to %d characters", ErrBadOptions, MinTokenLen, MaxTokenLen)
	}
	if o.Token == "" && !LoopbackOnly(o.Listen) {
		return fmt.Errorf("%w (listen %q)", ErrTokenRequired, o.Listen)
	}
	return nil
}

// LoopbackOnly reports whether the listen address addr binds only loopback
// interfaces: "localhost" or a loopback IP. An empty host binds every
// interface and is not loopback-only.
func LoopbackOnly(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Server is the admin HTTP server.
type Server struct {
	opts      Options
	backend   Backend
	log       *slog.Logger
	tokenHash *[sha256.Size]byte // nil when no token is configured
	handler   http.Handler
	srv       *http.Server
	requests  *prometheus.CounterVec
	inFlight  chan struct{}
	draining  atomic.Bool

	// mu guards the following fields.
	mu      sync.Mutex
	ln      net.Listener
	serving bool
}

// New validates o, applies defaults and builds the server. It binds nothing.
// A Listen address that is not loopback-only without a Token is refused with
// ErrTokenRequired.
func New(o Options, b Backend) (*Server, error) {
	if b == nil {
		return nil, fmt.Errorf("%w: nil backend", ErrBadOptions)
	}
	o.Token = strings.TrimSpace(o.Token)
	o.setDefaults()
	if err := o.validate(); err != nil {
		return nil, err
	}
	s := &Server{
		opts:     o,
		backend:  b,
		log:      o.Logger.With("component", "admin"),
		inFlight: make(chan struct{}, o.MaxInFlight),
	}
	if o.Token != "" {
		h := sha256.Sum256([]byte(o.Token))
		s.tokenHash = &h
	}
	s.opts.Token = "" // only the hash is kept
	reg := prometheus.Registerer(o.Registry)
	if o.Registry == nil {
		reg = prometheus.NewRegistry()
	}
	var err error
	if s.requests, err = registerRequests(reg); err != nil {
		return nil, err
	}
	s.handler = s.routes()
	s.srv = &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: o.ReadHeaderTimeout,
		ReadTimeout:       o.ReadTimeout,
		WriteTimeout:      o.WriteTimeout,
		IdleTimeout:       o.IdleTimeout,
		MaxHeaderBytes:    o.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	return s, nil
}

func registerRequests(reg prometheus.Registerer) (*prometheus.CounterVec, error) {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "subgate",
		Subsystem: "admin",
		Name:      "requests_total",
		Help:      "Admin HTTP requests answered, by route pattern (or \"other\") and status code.",
	}, []string{"route", "code"})
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
				return existing, nil
			}
		}
		return nil, fmt.Errorf("admin: register metrics: %w", err)
	}
	return c, nil
}

// Handler returns the server's complete handler (routing, authentication,
// JSON errors, metrics and access log), e.g. for httptest.
func (s *Server) Handler() http.Handler { return s.handler }

// SetDraining makes /readyz answer 503 "shutting down" from now on. The
// gateway calls it first when it shuts down; Serve calls it too.
func (s *Server) SetDraining() { s.draining.Store(true) }

// Listen binds the listen address. It is separate from Serve so that tests
// can bind port 0 and read Addr before serving.
func (s *Server) Listen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil || s.serving {
		return ErrServing
	}
	ln, err := net.Listen("tcp", s.opts.Listen)
	if err != nil {
		return fmt.Errorf("admin: listen: %w", err)
	}
	s.ln = ln
	return nil
}

// Addr returns the bound address, or nil before Listen.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Close releases the listener of a server that Listen bound but Serve never
// ran, and makes a later Serve fail. While Serve runs it closes every
// connection at once; use Serve's context for a graceful stop.
func (s *Server) Close() error {
	s.mu.Lock()
	ln, serving := s.ln, s.serving
	s.mu.Unlock()
	err := s.srv.Close()
	if ln != nil && !serving {
		if cerr := ln.Close(); cerr != nil && !errors.Is(cerr, net.ErrClosed) {
			err = cerr
		}
	}
	if err != nil {
		return fmt.Errorf("admin: close: %w", err)
	}
	return nil
}

// Serve serves until ctx ends or the server fails, binding first if Listen
// was not called. When ctx ends it sets draining and shuts down gracefully
// within ShutdownTimeout, then closes what remains. It returns only after
// the serving goroutine exited; nil after a clean shutdown.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	if s.serving {
		s.mu.Unlock()
		return ErrServing
	}
	if s.ln == nil {
		ln, err := net.Listen("tcp", s.opts.Listen)
		if err != nil {
			s.mu.Unlock()
			return fmt.Errorf("admin: listen: %w", err)
		}
		s.ln = ln
	}
	s.serving = true
	ln := s.ln
	s.mu.Unlock()

	s.log.Info("admin server listening", "addr", ln.Addr().String(),
		"auth", s.tokenHash != nil, "pprof", s.opts.Pprof)
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Go(func() { errc <- s.srv.Serve(ln) })
	defer wg.Wait()

	select {
	case err := <-errc:
		return fmt.Errorf("admin: serve: %w", err)
	case <-ctx.Done():
	}
	s.SetDraining()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.ShutdownTimeout)
	defer cancel()
	err := s.srv.Shutdown(sctx)
	if err != nil {
		// Connections still busy after the timeout are cut.
		s.srv.Close()
		err = fmt.Errorf("admin: shutdown: %w", err)
	}
	if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = fmt.Errorf("admin: serve: %w", serr)
	}
	s.log.Info("admin server stopped")
	return err
}
