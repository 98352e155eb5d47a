// Package gateway is the subgate application: it wires the store, the
// southbound device server, the northbound MQTT session and the admin
// server, and runs the uplink and downlink pipelines between them.
//
// It is the only package that translates between subdevice,
// southbound/frame and northbound/iotda types. It owns request correlation
// (platform request id -> pending device request, with deadlines), the
// sub-device lifecycle (registration, status reports, notifications) and
// the quota governor.
//
// Concurrency: Run starts a fixed set of goroutines and returns only after
// every one of them exited. Handler methods (Login, Frame, Logout) run on
// southbound worker goroutines and never block on the network: uplink goes
// to the store's writer with AppendAsync, downlink answers go to bounded
// publish queues. The registry and the correlator are guarded by their own
// mutexes; no I/O happens while one is held.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/subgate/subgate/gateway/admin"
	"github.com/subgate/subgate/northbound"
	"github.com/subgate/subgate/northbound/iotda"
	"github.com/subgate/subgate/southbound"
	"github.com/subgate/subgate/store"
	"github.com/subgate/subgate/subdevice"
)

// Deps are the gateway's injected dependencies.
type Deps struct {
	// Logger receives every log; nil discards.
	Logger *slog.Logger
	// Registry receives every collector and is served on /metrics; nil
	// creates a private one.
	Registry *prometheus.Registry
	// Version is reported in $sdk_info and /api/v1/status.
	Version string
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

// Gateway is one running subgate instance.
type Gateway struct {
	// observeWrite, when set before Run, gets the time of every PUBLISH
	// written to the MQTT socket (tests and benchmarks).
	observeWrite func(time.Time)

	cfg     Config
	log     *slog.Logger
	reg     *prometheus.Registry
	now     func() time.Time
	version string
	start   time.Time

	st     *store.Store
	devs   *subdevice.Registry
	north  *northbound.Session
	south  *southbound.Server
	adm    *admin.Server
	gov    *governor
	m      *gwMetrics
	gw     string // the gateway's device id
	custom customTopics

	ready chan struct{}
	upSig chan struct{} // northbound came up (capacity 1)
	epoch atomic.Uint64 // bumps on every northbound connect and loss
	// replayGate is the epoch whose after-connect messages (sync, statuses)
	// are queued; the outbox replay waits for it (issue 4 order).
	replayGate atomic.Uint64
	stopped    atomic.Bool

	corr   *correlator
	status *statusReporter
	regs   *registrar
	ota    *otaManager
	props  *propCache
	conns  sync.Map // *southbound.Conn -> *connState
	live   liveMap  // device id -> live connection (logged-in, registered or pending)

	// control publishes (responses, management) wait for their PUBACK here.
	ctrl      [2]chan ctrlMsg
	awaits    chan awaitMsg
	timeOff   atomic.Int64 // platform time minus local time, ms
	dlog      deviceLog
	limits    limitLog
	eventSeq  atomic.Uint64
	shadowSeq atomic.Uint64
	lastSeq   atomic.Uint64 // highest outbox seq appended by this process

	// shadowMu guards shadows: the gateway's shadow request id -> the
	// device that asked.
	shadowMu sync.Mutex
	shadows  map[string]shadowReq
}

// connState is the gateway's per-connection state, kept only for logged-in
// connections.
type connState struct {
	greeted atomic.Bool // demo: the first reply ("go online") was sent
}

// New validates cfg, opens nothing and binds nothing.
func New(cfg Config, deps Deps) (*Gateway, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	if deps.Registry == nil {
		deps.Registry = prometheus.NewRegistry()
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	if deps.Version == "" {
		deps.Version = "dev"
	}
	g := &Gateway{
		cfg:     cfg,
		log:     deps.Logger,
		reg:     deps.Registry,
		now:     deps.Now,
		version: deps.Version,
		gw:      cfg.Northbound.DeviceID,
		ready:   make(chan struct{}),
		upSig:   make(chan struct{}, 1),
		awaits:  make(chan awaitMsg, 1024),
	}
	for i := range g.ctrl {
		g.ctrl[i] = make(chan ctrlMsg, 4096)
	}
	g.live.init()
	ct, err := parseCustomTopics(cfg.Northbound.CustomTopics, g.gw)
	if err != nil {
		return nil, fmt.Errorf("northbound.custom_topics: %w", err)
	}
	g.custom = ct
	return g, nil
}

// Ready is closed once every listener is bound and the store is open.
func (g *Gateway) Ready() <-chan struct{} { return g.ready }

// SouthboundAddr is the device listener's address (after Ready).
func (g *Gateway) SouthboundAddr() net.Addr { return g.south.Addr() }

// SouthboundTLSAddr is the TLS device listener's address, or nil.
func (g *Gateway) SouthboundTLSAddr() net.Addr { return g.south.TLSAddr() }

// AdminAddr is the admin listener's address (after Ready), or nil.
func (g *Gateway) AdminAddr() net.Addr {
	if g.adm == nil {
		return nil
	}
	return g.adm.Addr()
}

// Registry returns the sub-device registry (after Ready).
func (g *Gateway) Registry() *subdevice.Registry { return g.devs }

// stage is a group of goroutines stopped together.
type stage struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	errs   chan error
}

func newStage(parent context.Context, errs chan error) *stage {
	ctx, cancel := context.WithCancel(parent)
	return &stage{ctx: ctx, cancel: cancel, errs: errs}
}

func (s *stage) goRun(name string, fn func(ctx context.Context) error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := fn(s.ctx); err != nil && !errors.Is(err, context.Canceled) {
			if !strings.HasPrefix(err.Error(), name+":") {
				err = fmt.Errorf("%s: %w", name, err)
			}
			select {
			case s.errs <- err:
			default:
			}
		}
	}()
}

func (s *stage) stop() {
	s.cancel()
	s.wg.Wait()
}

// Run opens the store, binds the listeners, connects to the platform and
// serves until ctx is done or a component fails. Then it shuts down in
// order (readiness, device intake, OFFLINE reports, outbox commit, MQTT
// disconnect, store close) within gateway.shutdown_timeout, and returns
// only after every goroutine it started has exited.
func (g *Gateway) Run(ctx context.Context) (err error) {
	g.start = g.now()
	g.m = newGatewayMetrics(g.reg, g)
	g.gov = newGovernor(g.cfg.Northbound.MaxMsgsPerSec, g.cfg.Northbound.MaxBytesPerSec, g.cfg.Northbound.QuotaMargin, g.now)
	g.gov.log = func(msg string, args ...any) { g.log.Warn(msg, append([]any{"component", "governor"}, args...)...) }
	g.gov.observe = g.observeWrite

	st, err := store.Open(store.Options{
		Dir:            g.cfg.Store.Dir,
		CommitInterval: g.cfg.Store.CommitInterval,
		OutboxMaxBytes: g.cfg.Outbox.MaxBytes,
		Overflow:       g.cfg.Outbox.Overflow,
		NoSync:         g.cfg.Store.NoSync,
		Logger:         g.log,
		Registerer:     g.reg,
		Now:            g.now,
	})
	if err != nil {
		return err
	}
	g.st = st
	storeClosed := false
	defer func() {
		if !storeClosed {
			if cerr := st.Close(); cerr != nil && err == nil {
				err = cerr
			}
		}
	}()
	version, devs, err := st.LoadDevices()
	if err != nil {
		return err
	}
	for i := range devs {
		// Nothing is connected yet: the remote address is history.
		devs[i].ConnectedAt = time.Time{}
	}
	g.devs = subdevice.NewRegistry(version, devs)
	g.props = newPropCache()
	g.corr = newCorrelator(g)
	g.status = newStatusReporter(g)
	g.regs = newRegistrar(g)
	g.ota = newOTAManager(g)
	g.loadLogConfig()
	g.log.Info("store loaded", "component", "gateway", "n", len(devs), "version", version)

	nbc := g.cfg.Northbound
	server := nbc.Server
	if nbc.BootstrapServer != "" {
		addr, err := g.bootstrap(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		server = accessServer(addr, nbc.BootstrapServer)
	}
	subs := append(iotda.Subscriptions(g.gw), g.custom.downTopics()...)
	north, err := northbound.New(northbound.Config{
		Server:             server,
		DeviceID:           nbc.DeviceID,
		Secret:             nbc.Secret.Reveal(),
		CheckTimestamp:     nbc.CheckTimestamp,
		CAFile:             nbc.CAFile,
		ServerName:         nbc.ServerName,
		InsecureSkipVerify: nbc.InsecureSkipVerify,
		CertFile:           nbc.CertFile,
		KeyFile:            nbc.KeyFile,
		KeepAlive:          nbc.KeepAlive,
		ConnectTimeout:     nbc.ConnectTimeout,
		MinBackoff:         nbc.MinBackoff,
		MaxBackoff:         nbc.MaxBackoff,
		Subscriptions:      subs,
		DownlinkQueue:      nbc.DownlinkQueue,
		OnUp:               g.onNorthUp,
		OnDown:             g.onNorthDown,
		OnPublishWritten:   g.gov.wrote,
		Now:                g.now,
	}, g.log, g.reg)
	if err != nil {
		return err
	}
	g.north = north

	sbc := g.cfg.Southbound
	listen := sbc.Listen
	if sbc.Auth == "mtls" {
		// Every device proves itself with a certificate: no plain port.
		listen = ""
	}
	south, err := southbound.New(southbound.Config{
		Listen:        listen,
		TLSListen:     sbc.TLSListen,
		TLSCertFile:   sbc.TLSCertFile,
		TLSKeyFile:    sbc.TLSKeyFile,
		ClientCAFile:  sbc.ClientCAFile,
		Codec:         sbc.Codec,
		Auth:          sbc.Auth,
		AllowList:     sbc.AllowList,
		Loops:         sbc.Loops,
		Workers:       sbc.Workers,
		WorkerQueue:   sbc.WorkerQueue,
		MaxConns:      sbc.MaxConns,
		MaxConnsPerIP: sbc.MaxConnsPerIP,
		MaxFrame:      sbc.MaxFrame,
		HelloTimeout:  sbc.HelloTimeout,
		IdleTimeout:   sbc.IdleTimeout,
		RatePerSec:    sbc.RatePerSec,
		RateBurst:     sbc.RateBurst,
		MaxOutbound:   sbc.MaxOutbound,
		SecondLogin:   sbc.SecondLogin,
		MaxBadFrames:  sbc.MaxBadFrames,
		RateStrikes:   sbc.RateStrikes,
		WriteTimeout:  sbc.TLSWriteTimeout,
	}, g, storeSecrets{st}, g.log, g.reg)
	if err != nil {
		return err
	}
	g.south = south

	if g.cfg.Admin.Listen != "" {
		token := ""
		if g.cfg.Admin.TokenFile != "" {
			b, err := os.ReadFile(g.cfg.Admin.TokenFile)
			if err != nil {
				return fmt.Errorf("admin.token_file: %w", err)
			}
			token = strings.TrimSpace(string(b))
		}
		adm, err := admin.New(admin.Options{
			Listen:          g.cfg.Admin.Listen,
			Token:           token,
			Pprof:           g.cfg.Admin.Pprof,
			Registry:        g.reg,
			Logger:          g.log,
			ShutdownTimeout: g.cfg.Gateway.ShutdownTimeout / 3,
		}, adminBackend{g})
		if err != nil {
			return err
		}
		if err := adm.Listen(); err != nil {
			return err
		}
		g.adm = adm
	}

	errs := make(chan error, 16)
	// Stages, stopped in reverse order of dependence.
	core := newStage(context.Background(), errs)   // governor, publishers, MQTT
	mid := newStage(context.Background(), errs)    // downlink, status, registrar, correlator
	intake := newStage(context.Background(), errs) // device server
	ops := newStage(context.Background(), errs)    // admin

	core.goRun("governor", func(ctx context.Context) error {
		g.gov.run(ctx, g.m.quotaTokens.Set, g.quotaWaited)
		return nil
	})
	core.goRun("northbound", g.north.Run)
	core.goRun("uplink", g.publishLoop)
	for i := range g.ctrl {
		class := Class(i)
		core.goRun("control-"+class.String(), func(ctx context.Context) error { return g.controlLoop(ctx, class) })
	}
	core.goRun("awaiter", g.awaitLoop)
	mid.goRun("downlink", g.downlinkLoop)
	mid.goRun("status", g.status.run)
	mid.goRun("registrar", g.regs.run)
	mid.goRun("persist", g.regs.persistLoop)
	mid.goRun("correlator", g.corr.run)
	mid.goRun("housekeeping", g.housekeeping)
	mid.goRun("ota", g.ota.run)
	intake.goRun("southbound", g.south.Run)
	if g.adm != nil {
		ops.goRun("admin", g.adm.Serve)
	}

	select {
	case <-g.south.Ready():
	case err := <-errs:
		g.shutdown(ops, intake, mid, core)
		return err
	case <-ctx.Done():
		g.shutdown(ops, intake, mid, core)
		return nil
	}
	close(g.ready)
	g.log.Info("gateway ready", "component", "gateway", "southbound", addrString(g.south.Addr()),
		"southbound_tls", addrString(g.south.TLSAddr()),
		"admin", addrString(g.AdminAddr()), "northbound", server, "device_id", g.gw)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errs:
		g.log.Error("component failed", "component", "gateway", "err", runErr)
	}
	g.shutdown(ops, intake, mid, core)
	if cerr := st.Close(); cerr != nil && runErr == nil {
		runErr = cerr
	}
	storeClosed = true
	return runErr
}

// shutdown stops the stages in order within the shutdown timeout.
func (g *Gateway) shutdown(ops, intake, mid, core *stage) {
	g.stopped.Store(true)
	if g.adm != nil {
		g.adm.SetDraining()
	}
	deadline := time.AfterFunc(g.cfg.Gateway.ShutdownTimeout, func() {
		g.log.Warn("shutdown timeout reached, stopping the rest at once", "component", "gateway",
			"dur", g.cfg.Gateway.ShutdownTimeout)
		mid.cancel()
		core.cancel()
	})
	defer deadline.Stop()
	g.log.Info("shutting down", "component", "gateway")
	// Stop device intake: every logged-in device is logged out, which
	// queues its OFFLINE status.
	intake.stop()
	// Report the OFFLINE statuses while the MQTT session is still up.
	g.status.flushNow(g.cfg.Gateway.ShutdownTimeout / 2)
	mid.stop()
	core.stop()
	ops.stop()
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

// onNorthUp runs on the northbound goroutine after each connect.
func (g *Gateway) onNorthUp() {
	g.gov.reset()
	g.epoch.Add(1)
	select {
	case g.upSig <- struct{}{}:
	default:
	}
	g.status.kick()
}

func (g *Gateway) onNorthDown(err error) {
	g.gov.reset()
	g.epoch.Add(1)
	g.noteLoss(err)
}

// housekeeping runs the after-connect sequence (§3.12) and the periodic
// re-sync.
func (g *Gateway) housekeeping(ctx context.Context) error {
	var resync <-chan time.Time
	if g.cfg.Subdevice.ResyncInterval > 0 {
		t := time.NewTicker(g.cfg.Subdevice.ResyncInterval)
		defer t.Stop()
		resync = t.C
	}
	// After a gateway start, devices reconnect over a while: report the
	// ones that did not come back as OFFLINE once, after the grace period,
	// instead of OFFLINE now and ONLINE a moment later (issue 5).
	grace := time.NewTimer(g.cfg.Subdevice.StartupGrace)
	defer grace.Stop()
	graceOver := false
	connects := 0
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-g.upSig:
			connects++
			e := g.epoch.Load()
			g.afterConnect(connects > 1, graceOver)
			g.replayGate.Store(e)
		case <-grace.C:
			graceOver = true
			if g.north.Connected() {
				g.status.reReportAll(false)
			}
		case <-resync:
			if g.north.Connected() {
				g.sendSync()
				g.status.reReportAll(false)
			}
		}
	}
}

// afterConnect: device info, time sync, sync request, full status report
// (iotda-protocol §3.12, §5.2, §5.3).
func (g *Gateway) afterConnect(reconnect, graceOver bool) {
	g.publishEvent(ClassManagement, "sdk_info", "", iotda.ServiceSDKInfo, iotda.EventSDKInfoReport, iotda.SDKInfoParas{
		DeviceSDKVersion: "subgate_" + g.version,
	})
	g.publishEvent(ClassManagement, "time_sync", "", iotda.ServiceTimeSync, iotda.EventTimeSyncRequest,
		iotda.TimeSyncRequestParas{DeviceSendTime: g.now().UnixMilli()})
	g.sendSync()
	g.logConnect()
	if reconnect || graceOver {
		g.status.reReportAll(reconnect)
	}
}

func (g *Gateway) sendSync() {
	g.publishEvent(ClassManagement, "sync", "", iotda.ServiceSubDeviceManager, iotda.EventSyncRequest,
		iotda.SyncParas{Version: g.devs.Version()})
}

// nextEventID returns a unique event id for requests that the platform
// answers with an echo.
func (g *Gateway) nextEventID() string {
	return fmt.Sprintf("sg-%d-%d", g.start.UnixNano(), g.eventSeq.Add(1))
}

// publishEvent queues a one-service event envelope for publishing.
func (g *Gateway) publishEvent(class Class, kind, objectDeviceID, serviceID, eventType string, paras any) string {
	return g.publishEventDone(class, kind, objectDeviceID, serviceID, eventType, paras, nil)
}

func (g *Gateway) publishEventDone(class Class, kind, objectDeviceID, serviceID, eventType string, paras any, done func(error)) string {
	id := g.nextEventID()
	payload, err := iotda.NewEvents(objectDeviceID, serviceID, eventType, id, g.platformNow(), paras)
	if err != nil {
		g.log.Error("encode event", "component", "gateway", "err", err, "kind", kind)
		if done != nil {
			done(err)
		}
		return id
	}
	g.enqueueControl(class, kind, iotda.TopicEventsUp(g.gw), payload, done)
	return id
}

// platformNow is local time corrected by the last time sync.
func (g *Gateway) platformNow() time.Time {
	return g.now().Add(time.Duration(g.timeOff.Load()) * time.Millisecond)
}

// storeSecrets adapts the store to southbound.Secrets.
type storeSecrets struct{ st *store.Store }

func (s storeSecrets) DeviceSecret(nodeID string) ([]byte, bool, error) { return s.st.Secret(nodeID) }
