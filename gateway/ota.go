package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/subgate/subgate/gateway/admin"
	"github.com/subgate/subgate/northbound/iotda"
	"github.com/subgate/subgate/southbound"
	"github.com/subgate/subgate/southbound/frame"
	"github.com/subgate/subgate/store"
	"github.com/subgate/subgate/subdevice"
)

// otaManager runs sub-device upgrades (iotda-protocol §4, issue 6;
// docs/ota.md). An upgrade notification for a sub-device becomes a job,
// persisted in the store. The package is downloaded once per SHA-256 into a
// content-addressed cache, whatever the number of jobs that need it, then
// pushed to each device in chunks with a window and per-chunk
// acknowledgements; the device verifies, installs and answers with its new
// version, which goes to the platform as upgrade_progress_report and
// version_report.
//
// Concurrency: one scheduler goroutine (run) owns every job. The handler
// methods (event on the downlink goroutine; frame, online, offline on
// southbound workers) only copy their input into bounded channels and
// never block: when a channel is full the input is dropped and counted,
// and the scheduler's tick recovers (deadlines, liveness checks). Package
// downloads run on a fixed pool of ota.download_workers goroutines fed by
// a bounded channel. Every goroutine exits when run's context ends.
type otaManager struct {
	g   *Gateway
	cfg OTAConfig
	m   *otaMetrics

	evs      chan otaEventMsg
	frames   chan otaFrameMsg
	conns    chan otaConnMsg
	reqs     chan otaAdminReq
	reported chan otaReportMsg
	dlq      chan dlTask
	dlDone   chan dlResult
	stopped  chan struct{} // closed when run returns
	stopOnce sync.Once
	idBase   string

	// Owned by the run goroutine.
	jobs       map[string]*otaJob
	byDev      map[string]*otaJob // the unfinished job of a device
	pending    []*otaJob          // unfinished jobs, oldest first
	finished   []*otaJob          // finished jobs, oldest first
	unreported map[string]*otaJob // finished jobs whose final report is not confirmed
	downloads  map[string]*otaDownload
	dlBacklog  []dlTask
	slots      int // jobs holding a transfer slot
	seq        uint64
	cache      *otaCache
	buf        []byte
	dirty      bool
}

// otaJob is a job and its volatile transfer state (scheduler-owned).
type otaJob struct {
	rec    store.OTAJob
	pinned bool // holds a cache pin on rec.Sign
	dlKey  string

	conn     *southbound.Conn // set while it holds a transfer slot
	phase    otaPhase
	chunk    int
	acked    int64
	sent     int64
	dupAt    int64 // offset of the last rewind on a repeated ack, -1 none
	deadline time.Time

	lastReport  time.Time
	lastPct     int
	needPersist bool

	reportInFlight bool
	reportAt       time.Time
	reportTries    int
}

type otaPhase uint8

const (
	phaseOffered otaPhase = iota + 1
	phaseStreaming
	phaseApplying
)

// otaDownload is a download in progress and the jobs waiting for it.
type otaDownload struct {
	waiters []*otaJob
}

type otaEventMsg struct {
	target string
	ev     iotda.Event
	at     time.Time
}

type otaFrameMsg struct {
	c        *southbound.Conn
	deviceID string
	f        frame.Frame
}

type otaConnMsg struct {
	c        *southbound.Conn
	deviceID string
	online   bool
}

type otaReportMsg struct {
	id  string
	err error
}

type otaAdminReq struct {
	cancel string // job id to cancel; "" lists
	state  string
	offset int
	limit  int
	reply  chan otaAdminResp // capacity 1
}

type otaAdminResp struct {
	jobs  []admin.OTAJob
	total int
	err   error
}

// Description texts that say why a job waits or ended.
const (
	descDemo = "the demo device protocol cannot carry firmware (docs/ota.md): use the jsonl or binary codec"
)

// maxReportsPerTick bounds the final reports re-sent per scheduler tick.
const maxReportsPerTick = 256

func newOTAManager(g *Gateway) *otaManager {
	cfg := g.cfg.OTA
	q := cfg.Queue
	return &otaManager{
		g:          g,
		cfg:        cfg,
		m:          newOTAMetrics(g.reg),
		evs:        make(chan otaEventMsg, q),
		frames:     make(chan otaFrameMsg, q),
		conns:      make(chan otaConnMsg, q),
		reqs:       make(chan otaAdminReq, 16),
		reported:   make(chan otaReportMsg, q),
		dlq:        make(chan dlTask, cfg.DownloadWorkers),
		dlDone:     make(chan dlResult, cfg.DownloadWorkers),
		stopped:    make(chan struct{}),
		idBase:     strconv.FormatInt(g.now().UnixNano(), 36),
		jobs:       map[string]*otaJob{},
		byDev:      map[string]*otaJob{},
		unreported: map[string]*otaJob{},
		downloads:  map[string]*otaDownload{},
		buf:        make([]byte, cfg.ChunkSize),
	}
}

// event handles one $ota event from the platform (downlink goroutine; must
// not block).
func (o *otaManager) event(target string, ev iotda.Event) {
	g := o.g
	switch ev.EventType {
	case iotda.EventVersionQuery:
		// The device protocol has no version frame: answer from the
		// versions the device reported in its hello (iotda §4.1).
		if target == "" || target == g.gw {
			g.publishEvent(ClassOTA, "ota", g.gw, iotda.ServiceOTA, iotda.EventVersionReport,
				iotda.VersionReportParas{SwVersion: g.version})
			return
		}
		d, ok := g.devs.ByID(target)
		if !ok {
			g.log.Info("OTA version query for an unknown sub-device", "component", "ota", "device_id", target)
			return
		}
		g.publishEvent(ClassOTA, "ota", target, iotda.ServiceOTA, iotda.EventVersionReport,
			iotda.VersionReportParas{FwVersion: d.FwVersion, SwVersion: d.SwVersion})
	case iotda.EventFirmwareUpgrade, iotda.EventSoftwareUpgrade, iotda.EventFirmwareUpgradeV2, iotda.EventSoftwareUpgradeV2:
		select {
		case o.evs <- otaEventMsg{target: target, ev: ev, at: g.now()}:
		default:
			o.m.dropped.WithLabelValues(otaDropEvents).Inc()
			var up iotda.UpgradeParas
			_ = json.Unmarshal(ev.Paras, &up)
			o.reportDirect(target, up.Version, iotda.OTADeviceInUse, "the gateway's OTA queue is full (ota.queue); retry later")
		}
	default:
		g.log.Info("OTA event ignored", "component", "ota", "device_id", target, "event", ev.EventType)
	}
}

// frame handles an ota_ack or ota_result from a device (worker goroutine;
// must not block).
func (o *otaManager) frame(c *southbound.Conn, deviceID string, f frame.Frame) {
	select {
	case o.frames <- otaFrameMsg{c: c, deviceID: deviceID, f: f.Clone()}:
	default:
		// The ack timeout resends what this frame acknowledged.
		o.m.dropped.WithLabelValues(otaDropFrames).Inc()
	}
}

// online and offline tell the manager about a device's connection (worker
// goroutines; must not block). A dropped change is recovered by the
// scheduler's liveness check on its next tick.
func (o *otaManager) online(c *southbound.Conn, deviceID string) {
	o.connChange(otaConnMsg{c: c, deviceID: deviceID, online: true})
}

func (o *otaManager) offline(c *southbound.Conn, deviceID string) {
	o.connChange(otaConnMsg{c: c, deviceID: deviceID})
}

func (o *otaManager) connChange(m otaConnMsg) {
	select {
	case o.conns <- m:
	default:
		o.m.dropped.WithLabelValues(otaDropConns).Inc()
	}
}

// run is the scheduler goroutine: it loads the persisted jobs, starts the
// download workers and serves until ctx is done.
func (o *otaManager) run(ctx context.Context) error {
	defer o.stopOnce.Do(func() { close(o.stopped) })
	client, err := newOTAHTTPClient(o.cfg.CAFile, o.cfg.DownloadWorkers)
	if err != nil {
		return err
	}
	o.load()
	dir := o.cfg.CacheDir
	if dir == "" {
		dir = filepath.Join(o.g.cfg.Store.Dir, "ota")
	}
	o.cache, err = newOTACache(dir, o.cfg.CacheMaxBytes, o.g.now, func(n int64) { o.m.cacheBytes.Set(float64(n)) },
		func(key string) bool {
			for _, j := range o.pending {
				if j.dlKey == key {
					return true
				}
			}
			return false
		})
	if err != nil {
		return err
	}
	defer o.cache.close()
	dl := &otaDownloader{client: client, cache: o.cache, timeout: o.cfg.DownloadTimeout, attempts: o.cfg.MaxAttempts,
		now: o.g.now, count: func(n int64) { o.m.downloaded.Add(float64(n)) }}
	var wg sync.WaitGroup
	for range o.cfg.DownloadWorkers {
		wg.Go(func() {
			for {
				select {
				case <-ctx.Done():
					return
				case t := <-o.dlq:
					r := dl.fetch(ctx, t)
					select {
					case o.dlDone <- r:
					case <-ctx.Done():
						return
					}
				}
			}
		})
	}
	defer wg.Wait()
	defer client.CloseIdleConnections()

	tick := time.NewTicker(o.tickInterval())
	defer tick.Stop()
	o.dirty = true
	for {
		if o.dirty {
			o.dirty = false
			o.schedule()
		}
		select {
		case <-ctx.Done():
			o.flush()
			return nil
		case m := <-o.evs:
			o.onEvent(m)
		case m := <-o.frames:
			o.onFrame(m)
		case m := <-o.conns:
			o.onConn(m)
		case r := <-o.dlDone:
			o.onDownload(r)
		case r := <-o.reported:
			o.onReported(r)
		case r := <-o.reqs:
			r.reply <- o.onAdmin(r)
		case <-tick.C:
			o.onTick()
		}
	}
}

// tickInterval resolves deadlines and throttles: a quarter of the shortest
// of them, within 10 ms..1 s.
func (o *otaManager) tickInterval() time.Duration {
	d := min(o.cfg.AckTimeout, o.cfg.ApplyTimeout, o.cfg.RetryBackoff)
	if o.cfg.ProgressInterval > 0 {
		d = min(d, o.cfg.ProgressInterval)
	}
	return min(max(d/4, 10*time.Millisecond), time.Second)
}

func isFinal(state string) bool {
	return state == admin.OTASucceeded || state == admin.OTAFailed || state == admin.OTACanceled
}

// load restores the persisted jobs: unfinished ones start over as queued
// (the device tells its offset when offered again), finished ones whose
// report was not confirmed are reported again.
func (o *otaManager) load() {
	recs, err := o.g.st.LoadOTAJobs()
	if err != nil {
		o.g.log.Error("OTA jobs not all loaded", "component", "ota", "err", err, "n", len(recs))
	}
	slices.SortFunc(recs, func(a, b store.OTAJob) int { return a.Created.Compare(b.Created) })
	for _, rec := range recs {
		j := &otaJob{rec: rec, dupAt: -1}
		o.jobs[rec.ID] = j
		if isFinal(rec.State) {
			o.finished = append(o.finished, j)
			o.m.jobsBy[rec.State].Inc()
			if !rec.Reported {
				o.unreported[rec.ID] = j
			}
			continue
		}
		if old := o.byDev[rec.DeviceID]; old != nil {
			// Two unfinished jobs for one device cannot both run: the
			// newer one wins, as it would have on arrival.
			o.finish(old, admin.OTAFailed, iotda.OTAInternalError, "superseded by a newer upgrade notification")
		}
		j.rec.State = ""
		j.dlKey = downloadKey(&j.rec)
		o.setState(j, admin.OTAQueued)
		o.pending = append(o.pending, j)
		o.byDev[rec.DeviceID] = j
	}
	slices.SortFunc(o.finished, func(a, b *otaJob) int { return a.rec.Updated.Compare(b.rec.Updated) })
	if len(recs) > 0 {
		o.g.log.Info("OTA jobs loaded", "component", "ota", "n", len(recs), "unfinished", len(o.pending))
	}
}

// flush writes the transfer offsets of unfinished jobs at shutdown.
func (o *otaManager) flush() {
	for _, j := range o.pending {
		if j.conn != nil {
			j.rec.Offset = j.acked
		}
		o.persist(j)
	}
}

func downloadKey(rec *store.OTAJob) string {
	if rec.Sign != "" {
		return rec.Sign
	}
	sum := sha256.Sum256([]byte(rec.URL))
	return "u-" + hex.EncodeToString(sum[:20])
}

func (o *otaManager) setState(j *otaJob, state string) {
	if j.rec.State == state {
		return
	}
	if g, ok := o.m.jobsBy[j.rec.State]; ok {
		g.Dec()
	}
	j.rec.State = state
	o.m.jobsBy[state].Inc()
}

// persist writes j through the store's writer without waiting; a full
// queue leaves it marked for the next tick.
func (o *otaManager) persist(j *otaJob) {
	j.rec.Updated = o.g.now()
	err := o.g.st.UpdateOTAJobsAsync([]store.OTAJob{j.rec}, nil, nil)
	j.needPersist = err != nil && !errors.Is(err, store.ErrClosed)
	if j.needPersist {
		o.m.dropped.WithLabelValues(otaDropPersist).Inc()
	}
}

// onEvent turns an upgrade notification into a job (iotda §4.2).
func (o *otaManager) onEvent(m otaEventMsg) {
	g := o.g
	var up iotda.UpgradeParas
	perr := json.Unmarshal(m.ev.Paras, &up)
	if m.target == "" || m.target == g.gw {
		o.reportDirect(g.gw, up.Version, iotda.OTAInternalError,
			"subgate does not upgrade itself over the air; upgrade the gateway with its deployment tooling")
		return
	}
	if _, ok := g.devs.ByID(m.target); !ok {
		g.log.Info("OTA upgrade for an unknown sub-device", "component", "ota", "device_id", m.target)
		o.reportDirect(m.target, up.Version, iotda.OTAInternalError, "the gateway does not know this sub-device")
		return
	}
	if old := o.byDev[m.target]; old != nil {
		if perr == nil && old.rec.Version == up.Version && strings.EqualFold(old.rec.Sign, up.Sign) && old.rec.URL == up.URL {
			// The platform repeats a notification: keep the running
			// job, with the fresher token.
			old.rec.AccessToken, old.rec.TokenExpiry = up.AccessToken, tokenExpiry(m.at, up.Expires)
			old.rec.TaskID = up.TaskID
			o.persist(old)
			return
		}
		o.cancelJob(old, admin.OTAFailed, "superseded by a newer upgrade notification")
	}
	if len(o.pending) >= o.cfg.MaxJobs {
		o.m.dropped.WithLabelValues(otaDropJobs).Inc()
		o.reportDirect(m.target, up.Version, iotda.OTADeviceInUse, "the gateway runs ota.max_jobs upgrades already; retry later")
		return
	}
	o.seq++
	now := g.now()
	j := &otaJob{dupAt: -1, rec: store.OTAJob{
		ID: "ota-" + o.idBase + "-" + strconv.FormatUint(o.seq, 10), DeviceID: m.target, EventType: m.ev.EventType,
		TaskID: up.TaskID, Version: up.Version, URL: up.URL, AccessToken: up.AccessToken,
		TokenExpiry: tokenExpiry(m.at, up.Expires), FileName: up.FileName, FileSize: max(up.FileSize, 0),
		Sign: strings.ToLower(up.Sign), Created: now,
	}}
	if len(j.rec.Version) > 256 || len(j.rec.URL) > 8192 || len(j.rec.AccessToken) > 8192 {
		j.rec.Version, j.rec.URL, j.rec.AccessToken = clip(j.rec.Version, 256), "", ""
		o.admit(j)
		o.finish(j, admin.OTAFailed, iotda.OTAInternalError, "upgrade parameters too long")
		return
	}
	o.admit(j)
	if code, why := o.check(j, up, perr); why != "" {
		o.finish(j, admin.OTAFailed, code, why)
		return
	}
	j.dlKey = downloadKey(&j.rec)
	g.log.Info("OTA job created", "component", "ota", "device_id", j.rec.DeviceID, "request_id", j.rec.ID,
		"version", j.rec.Version, "n", j.rec.FileSize)
	o.persist(j)
	o.dirty = true
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// admit registers a new job as queued.
func (o *otaManager) admit(j *otaJob) {
	o.jobs[j.rec.ID] = j
	o.byDev[j.rec.DeviceID] = j
	o.pending = append(o.pending, j)
	o.setState(j, admin.OTAQueued)
}

// check validates a notification; a non-empty reason fails the job with
// code (iotda §4.2, §4.4, §4.5; docs/ota.md lists the choices).
func (o *otaManager) check(j *otaJob, up iotda.UpgradeParas, perr error) (int, string) {
	v1 := j.rec.EventType == iotda.EventFirmwareUpgrade || j.rec.EventType == iotda.EventSoftwareUpgrade
	switch {
	case perr != nil:
		return iotda.OTAInternalError, "upgrade paras are not a JSON object of the documented fields"
	case up.Version == "" || up.URL == "":
		return iotda.OTAInternalError, "upgrade needs version and url"
	case up.Sign != "" && !isSign(strings.ToLower(up.Sign)):
		return iotda.OTAVerifyFailed, "sign must be the 64 hex digits of the package's SHA-256"
	case v1 && up.Sign == "":
		return iotda.OTAVerifyFailed, "no sign to verify the package with"
	case v1 && up.FileSize <= 0:
		return iotda.OTAVerifyFailed, "no file_size to verify the package with"
	case up.FileSize > o.cfg.CacheMaxBytes:
		return iotda.OTANoStorage, fmt.Sprintf("package of %d bytes is larger than the gateway's cache (ota.cache_max_bytes %d)",
			up.FileSize, o.cfg.CacheMaxBytes)
	case o.g.cfg.Southbound.Codec == "demo":
		return iotda.OTAUnsupportedPackage, descDemo
	}
	u, err := url.Parse(up.URL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return iotda.OTAInternalError, "package url must be an https URL"
	}
	return 0, ""
}

// tokenExpiry turns expires (seconds of token lifetime from the
// notification, iotda §4.2; the unit is our reading, docs/ota.md) into an
// instant; 0 or less means none.
func tokenExpiry(at time.Time, expires int64) time.Time {
	const maxLifetime = 10 * 365 * 24 * 3600
	if expires <= 0 || expires > maxLifetime {
		return time.Time{}
	}
	return at.Add(time.Duration(expires) * time.Second)
}

// schedule starts what can start: downloads for queued jobs without their
// package, transfers for jobs whose package is ready and whose device is
// connected, while transfer slots are free.
func (o *otaManager) schedule() {
	now := o.g.now()
	for _, j := range slices.Clone(o.pending) {
		if j.conn != nil || isFinal(j.rec.State) || j.rec.NextAttempt.After(now) {
			continue
		}
		if !j.pinned {
			if j.rec.Sign != "" {
				if size, ok := o.cache.pin(j.rec.Sign); ok {
					j.pinned = true
					j.rec.FileSize = size
				}
			}
			if !j.pinned {
				o.requestDownload(j)
				continue
			}
		}
		if o.slots >= o.cfg.MaxConcurrent {
			continue
		}
		c, ok := o.g.connByDevice(j.rec.DeviceID)
		if !ok {
			continue
		}
		o.startTransfer(j, c)
	}
}

// requestDownload joins j to the download of its package, starting one
// when none runs (singleflight per package).
func (o *otaManager) requestDownload(j *otaJob) {
	o.setState(j, admin.OTADownloading)
	d := o.downloads[j.dlKey]
	if d == nil {
		d = &otaDownload{}
		o.downloads[j.dlKey] = d
		t := dlTask{key: j.dlKey, url: j.rec.URL, token: j.rec.AccessToken, expiry: j.rec.TokenExpiry,
			size: j.rec.FileSize, sign: j.rec.Sign}
		select {
		case o.dlq <- t:
		default:
			o.dlBacklog = append(o.dlBacklog, t)
		}
	}
	if !slices.Contains(d.waiters, j) {
		d.waiters = append(d.waiters, j)
	}
}

func (o *otaManager) onDownload(r dlResult) {
	if len(o.dlBacklog) > 0 {
		select {
		case o.dlq <- o.dlBacklog[0]:
			o.dlBacklog = slices.Delete(o.dlBacklog, 0, 1)
		default:
		}
	}
	d := o.downloads[r.key]
	delete(o.downloads, r.key)
	switch {
	case r.err == nil && r.cached:
		o.m.downloads.WithLabelValues("cached").Inc()
	case r.err == nil:
		o.m.downloads.WithLabelValues("ok").Inc()
		o.g.log.Info("OTA package downloaded", "component", "ota", "n", r.size, "sign", r.sign)
	default:
		o.m.downloads.WithLabelValues("failed").Inc()
		o.g.log.Warn("OTA package download failed", "component", "ota", "err", r.err, "code", r.code)
	}
	if d == nil {
		return
	}
	o.dirty = true
	for _, j := range d.waiters {
		if isFinal(j.rec.State) || j.pinned || j.dlKey != r.key {
			continue
		}
		switch {
		case r.err == nil:
			if j.rec.Sign == "" {
				j.rec.Sign = r.sign
			}
			if j.rec.Sign != r.sign {
				o.finish(j, admin.OTAFailed, iotda.OTAVerifyFailed, "package SHA-256 does not match sign")
				continue
			}
			size, ok := o.cache.pin(r.sign)
			if !ok {
				o.failAttempt(j, iotda.OTAInternalError, "package left the cache before use")
				continue
			}
			j.pinned, j.rec.FileSize, j.dlKey = true, size, r.sign
			o.setState(j, admin.OTAQueued)
			o.persist(j)
		case errors.Is(r.err, context.Canceled):
		case r.permanent:
			o.finish(j, admin.OTAFailed, r.code, r.err.Error())
		default:
			o.failAttempt(j, r.code, r.err.Error())
		}
	}
}

// chunkFor is the chunk size for c's codec: jsonl carries chunks in
// base64, so a chunk must fit in a frame after the 4/3 growth.
func (o *otaManager) chunkFor(c *southbound.Conn) int {
	n := o.cfg.ChunkSize
	if c.Codec().Name() == "jsonl" {
		n = min(n, (o.g.cfg.Southbound.MaxFrame-512)/4*3)
	}
	return max(n, 1)
}

// startTransfer offers the package to the device (device-protocol §6).
func (o *otaManager) startTransfer(j *otaJob, c *southbound.Conn) {
	if !c.Native() {
		o.finish(j, admin.OTAFailed, iotda.OTAUnsupportedPackage, descDemo)
		return
	}
	j.conn, j.phase, j.chunk = c, phaseOffered, o.chunkFor(c)
	j.acked, j.sent, j.dupAt = 0, 0, -1
	o.slots++
	o.setState(j, admin.OTATransferring)
	j.rec.Description = ""
	err := c.Send(frame.Frame{Type: frame.TypeOTAOffer, RequestID: j.rec.ID, Version: j.rec.Version,
		Size: j.rec.FileSize, Sign: j.rec.Sign})
	if err != nil {
		o.pause(j, "device connection lost: "+err.Error())
		return
	}
	j.deadline = o.g.now().Add(o.cfg.AckTimeout)
	o.g.log.Debug("OTA offer sent", "component", "ota", "device_id", j.rec.DeviceID, "request_id", j.rec.ID)
	o.persist(j)
}

// release gives back j's transfer slot.
func (o *otaManager) release(j *otaJob) {
	if j.conn != nil {
		j.conn = nil
		o.slots--
		o.dirty = true
	}
	j.phase = 0
}

// pause stops a transfer whose device went away; it resumes from the
// device's offset when the device is back. Not a failed attempt.
func (o *otaManager) pause(j *otaJob, why string) {
	j.rec.Offset = j.acked
	o.release(j)
	o.setState(j, admin.OTAQueued)
	j.rec.Description = why
	o.persist(j)
}

// backoff is ota.retry_backoff doubled per attempt, at most 32 times.
func (o *otaManager) backoff(attempt int) time.Duration {
	return o.cfg.RetryBackoff << min(max(attempt-1, 0), 5)
}

// failAttempt ends one try; the job is retried after a backoff until
// ota.max_attempts, then it fails with code.
func (o *otaManager) failAttempt(j *otaJob, code int, why string) {
	if j.conn != nil {
		j.rec.Offset = j.acked
	}
	o.release(j)
	j.rec.Attempts++
	if j.rec.Attempts >= o.cfg.MaxAttempts {
		o.finish(j, admin.OTAFailed, code, fmt.Sprintf("%s (attempt %d of %d)", why, j.rec.Attempts, o.cfg.MaxAttempts))
		return
	}
	o.setState(j, admin.OTAQueued)
	j.rec.Description = why + "; retrying"
	j.rec.NextAttempt = o.g.now().Add(o.backoff(j.rec.Attempts))
	o.g.log.Info("OTA attempt failed", "component", "ota", "device_id", j.rec.DeviceID, "request_id", j.rec.ID,
		"err", why, "n", j.rec.Attempts)
	o.persist(j)
}

// cancelJob ends an unfinished job on the gateway's side: a device in the
// middle of a transfer gets an error frame naming the job.
func (o *otaManager) cancelJob(j *otaJob, state, why string) {
	if j.conn != nil {
		if err := j.conn.Send(frame.Frame{Type: frame.TypeError, Code: frame.CodeRefused, RequestID: j.rec.ID,
			Reason: "upgrade " + state + ": " + why}); err != nil {
			o.g.m.sendErrors.Inc()
		}
	}
	o.finish(j, state, iotda.OTAInternalError, why)
}

// finish ends j and reports the outcome to the platform.
func (o *otaManager) finish(j *otaJob, state string, code int, why string) {
	if j.conn != nil {
		j.rec.Offset = j.acked
	}
	o.release(j)
	if j.pinned {
		o.cache.unpin(j.rec.Sign)
		j.pinned = false
	}
	o.setState(j, state)
	j.rec.ResultCode, j.rec.Description, j.rec.Reported = code, why, false
	j.rec.NextAttempt = time.Time{}
	if o.byDev[j.rec.DeviceID] == j {
		delete(o.byDev, j.rec.DeviceID)
	}
	if i := slices.Index(o.pending, j); i >= 0 {
		o.pending = slices.Delete(o.pending, i, i+1)
	}
	o.finished = append(o.finished, j)
	o.m.results.WithLabelValues(strconv.Itoa(code)).Inc()
	if state == admin.OTASucceeded {
		o.g.log.Info("OTA job succeeded", "component", "ota", "device_id", j.rec.DeviceID, "request_id", j.rec.ID,
			"version", j.rec.Version)
	} else {
		o.g.log.Info("OTA job ended", "component", "ota", "device_id", j.rec.DeviceID, "request_id", j.rec.ID,
			"state", state, "code", code, "err", why)
	}
	o.persist(j)
	o.unreported[j.rec.ID] = j
	o.report(j)
	o.prune()
}

// report sends the final upgrade_progress_report of a finished job
// (iotda §4.5). It is repeated until the platform acknowledged it.
func (o *otaManager) report(j *otaJob) {
	p := iotda.ProgressParas{ResultCode: j.rec.ResultCode, Version: j.rec.Version, Description: j.rec.Description}
	if j.rec.State == admin.OTASucceeded {
		p.Progress = 100
	} else if j.rec.FileSize > 0 {
		p.Progress = int(min(j.rec.Offset*100/j.rec.FileSize, 99))
	}
	if len(p.Description) > 512 {
		p.Description = p.Description[:512]
	}
	j.reportInFlight = true
	// A lost callback must not leave the report unsent for ever.
	j.reportAt = o.g.now().Add(max(time.Minute, o.cfg.RetryBackoff))
	id := j.rec.ID
	o.g.publishEventDone(ClassOTA, "ota", j.rec.DeviceID, iotda.ServiceOTA, iotda.EventUpgradeProgress, p, func(err error) {
		select {
		case o.reported <- otaReportMsg{id: id, err: err}:
		default:
			o.m.dropped.WithLabelValues(otaDropReports).Inc()
		}
	})
}

// reportDirect answers a notification that did not become a job.
func (o *otaManager) reportDirect(target, version string, code int, why string) {
	o.g.publishEvent(ClassOTA, "ota", target, iotda.ServiceOTA, iotda.EventUpgradeProgress,
		iotda.ProgressParas{ResultCode: code, Version: version, Description: why})
}

func (o *otaManager) onReported(r otaReportMsg) {
	j := o.unreported[r.id]
	if j == nil {
		return
	}
	j.reportInFlight = false
	if r.err != nil {
		j.reportTries++
		j.reportAt = o.g.now().Add(o.backoff(j.reportTries))
		return
	}
	delete(o.unreported, r.id)
	j.rec.Reported = true
	o.persist(j)
	o.prune()
}

// prune forgets the oldest reported finished jobs beyond ota.keep_finished.
func (o *otaManager) prune() {
	excess := len(o.finished) - o.cfg.KeepFinished
	if excess <= 0 {
		return
	}
	var del []string
	kept := o.finished[:0]
	for _, j := range o.finished {
		if excess > 0 && j.rec.Reported {
			excess--
			delete(o.jobs, j.rec.ID)
			o.m.jobsBy[j.rec.State].Dec()
			del = append(del, j.rec.ID)
			continue
		}
		kept = append(kept, j)
	}
	clear(o.finished[len(kept):])
	o.finished = kept
	if err := o.g.st.UpdateOTAJobsAsync(nil, del, nil); err != nil && !errors.Is(err, store.ErrClosed) {
		o.m.dropped.WithLabelValues(otaDropPersist).Inc()
	}
}

// succeed records a device's successful upgrade (iotda §4.5: the version
// must be the package's) and reports it with the new version (§4.1).
func (o *otaManager) succeed(j *otaJob) {
	g := o.g
	sw := j.rec.EventType == iotda.EventSoftwareUpgrade || j.rec.EventType == iotda.EventSoftwareUpgradeV2
	d, ok := g.devs.Update(j.rec.DeviceID, func(d *subdevice.Device) {
		if sw {
			d.SwVersion = j.rec.Version
		} else {
			d.FwVersion = j.rec.Version
		}
	})
	j.rec.Offset = j.rec.FileSize
	o.finish(j, admin.OTASucceeded, iotda.OTASuccess, "")
	if ok {
		g.persistAsync(d)
		g.publishEvent(ClassOTA, "ota", j.rec.DeviceID, iotda.ServiceOTA, iotda.EventVersionReport,
			iotda.VersionReportParas{FwVersion: d.FwVersion, SwVersion: d.SwVersion})
	}
}

func (o *otaManager) onConn(m otaConnMsg) {
	j := o.byDev[m.deviceID]
	if j == nil {
		return
	}
	if !m.online && j.conn == m.c {
		o.pause(j, "device disconnected")
	}
	o.dirty = true
}

// onFrame handles the device's side of the transfer (device-protocol §6).
func (o *otaManager) onFrame(m otaFrameMsg) {
	f := m.f
	j := o.jobs[f.RequestID]
	if j == nil || j.rec.DeviceID != m.deviceID || isFinal(j.rec.State) {
		o.g.sendErr(m.c, frame.CodeUnsupported, 0, f.RequestID, "no OTA job "+strconv.Quote(clip(f.RequestID, 64))+" is running for this device")
		return
	}
	if j.conn != m.c {
		// A late frame of an earlier connection.
		return
	}
	switch f.Type {
	case frame.TypeOTAAck:
		o.onAck(j, f)
	case frame.TypeOTAResult:
		o.onResult(j, f)
	}
}

func (o *otaManager) onAck(j *otaJob, f frame.Frame) {
	if f.ResultCode != 0 {
		why := "device refused the upgrade"
		if f.ResultDesc != "" {
			why += ": " + f.ResultDesc
		}
		o.finish(j, admin.OTAFailed, int(f.ResultCode), why)
		return
	}
	now := o.g.now()
	size := j.rec.FileSize
	switch j.phase {
	case phaseOffered:
		if f.Offset < 0 || f.Offset > size {
			o.protocolError(j, fmt.Sprintf("device accepted at offset %d of a %d-byte package", f.Offset, size))
			return
		}
		j.acked, j.sent, j.phase = f.Offset, f.Offset, phaseStreaming
		j.rec.Offset = f.Offset
		j.deadline = now.Add(o.cfg.AckTimeout)
		o.progress(j, true)
	case phaseStreaming:
		switch {
		case f.Offset < 0 || f.Offset > j.sent:
			o.protocolError(j, fmt.Sprintf("device acknowledged offset %d; only %d bytes were sent", f.Offset, j.sent))
			return
		case f.Offset > j.acked:
			j.acked, j.rec.Offset, j.dupAt = f.Offset, f.Offset, -1
			j.deadline = now.Add(o.cfg.AckTimeout)
			o.progress(j, false)
		case f.Offset == j.acked && j.sent > j.acked && j.dupAt != f.Offset:
			// The device dropped a chunk and states its offset again:
			// resend from there, once per offset (the window's other
			// chunks repeat the same ack).
			j.sent, j.dupAt = f.Offset, f.Offset
		}
	default:
		return
	}
	if j.acked == size {
		j.phase = phaseApplying
		o.setState(j, admin.OTAApplying)
		j.deadline = now.Add(o.cfg.ApplyTimeout)
		o.persist(j)
		return
	}
	o.pump(j)
}

// protocolError fails an attempt on a device that broke the transfer
// rules; it is told so.
func (o *otaManager) protocolError(j *otaJob, why string) {
	o.g.sendErr(j.conn, frame.CodeBadFrame, 0, j.rec.ID, why)
	o.failAttempt(j, iotda.OTAInternalError, why)
}

// pump sends chunks up to the window past the last acknowledged offset.
func (o *otaManager) pump(j *otaJob) {
	size := j.rec.FileSize
	window := int64(o.cfg.Window) * int64(j.chunk)
	for j.sent < size && j.sent-j.acked < window {
		n := min(int64(j.chunk), size-j.sent)
		buf := o.buf[:n]
		if err := o.cache.readAt(j.rec.Sign, buf, j.sent); err != nil {
			o.g.log.Error("OTA package unreadable", "component", "ota", "request_id", j.rec.ID, "err", err)
			o.cache.unpin(j.rec.Sign)
			j.pinned = false
			o.cache.drop(j.rec.Sign)
			o.failAttempt(j, iotda.OTAInternalError, "package unreadable in the gateway's cache")
			return
		}
		err := j.conn.Send(frame.Frame{Type: frame.TypeOTAChunk, RequestID: j.rec.ID, Offset: j.sent, Content: buf})
		if errors.Is(err, frame.ErrCannotCarry) {
			o.finish(j, admin.OTAFailed, iotda.OTAUnsupportedPackage, descDemo)
			return
		}
		if err != nil {
			o.pause(j, "device connection lost: "+err.Error())
			return
		}
		j.sent += n
		o.m.pushed.Add(float64(n))
	}
}

// progress reports the transfer's progress, at most once per
// ota.progress_interval and only when the percentage moved (iotda §4.5:
// intermediate reports carry result_code 0 and progress < 100).
func (o *otaManager) progress(j *otaJob, force bool) {
	size := j.rec.FileSize
	pct := 0
	if size > 0 {
		pct = int(min(j.acked*100/size, 99))
	}
	now := o.g.now()
	if !force && (pct == j.lastPct || now.Sub(j.lastReport) < o.cfg.ProgressInterval) {
		return
	}
	j.lastPct, j.lastReport = pct, now
	o.g.publishEvent(ClassOTA, "ota", j.rec.DeviceID, iotda.ServiceOTA, iotda.EventUpgradeProgress,
		iotda.ProgressParas{ResultCode: iotda.OTASuccess, Progress: pct, Version: j.rec.Version,
			Description: "transferring the package to the device"})
	o.persist(j)
}

func (o *otaManager) onResult(j *otaJob, f frame.Frame) {
	if f.ResultCode == 0 {
		if f.Version != j.rec.Version {
			o.finish(j, admin.OTAFailed, iotda.OTAInstallFailed,
				fmt.Sprintf("device reported success but runs version %q, not %q", clip(f.Version, 64), j.rec.Version))
			return
		}
		if j.acked < j.rec.FileSize && j.phase != phaseOffered {
			j.acked = j.rec.FileSize
		}
		o.succeed(j)
		return
	}
	why := "device reported a failure"
	if f.ResultDesc != "" {
		why += ": " + clip(f.ResultDesc, 256)
	}
	o.finish(j, admin.OTAFailed, int(f.ResultCode), why)
}

// onTick enforces deadlines, checks that transferring devices are still
// connected, re-sends unconfirmed final reports and retries persistence.
func (o *otaManager) onTick() {
	now := o.g.now()
	for _, j := range slices.Clone(o.pending) {
		if j.needPersist {
			o.persist(j)
		}
		if j.conn == nil {
			if !isFinal(j.rec.State) && !j.rec.NextAttempt.After(now) {
				// Due now: a retry whose backoff ran out, or a device that
				// is connected although its online change was dropped on
				// a full queue (conn_queue_full) and so never woke the
				// scheduler.
				if _, live := o.g.connByDevice(j.rec.DeviceID); live || !j.rec.NextAttempt.IsZero() {
					o.dirty = true
				}
			}
			continue
		}
		if c, ok := o.g.connByDevice(j.rec.DeviceID); !ok || c != j.conn {
			o.pause(j, "device disconnected")
			continue
		}
		if now.After(j.deadline) {
			switch j.phase {
			case phaseApplying:
				o.failAttempt(j, iotda.OTAInternalError, "device did not report a result within ota.apply_timeout")
			default:
				o.failAttempt(j, iotda.OTAInternalError, "device did not acknowledge within ota.ack_timeout")
			}
			continue
		}
		if j.phase == phaseStreaming {
			o.progress(j, false)
		}
	}
	if len(o.dlBacklog) > 0 {
		select {
		case o.dlq <- o.dlBacklog[0]:
			o.dlBacklog = slices.Delete(o.dlBacklog, 0, 1)
		default:
		}
	}
	if len(o.unreported) == 0 || !o.g.north.Connected() {
		return
	}
	sent := 0
	for _, j := range o.unreported {
		if sent >= maxReportsPerTick {
			break
		}
		if j.needPersist {
			o.persist(j)
		}
		if now.Before(j.reportAt) && (j.reportInFlight || j.reportTries > 0) {
			continue
		}
		o.report(j)
		sent++
	}
}

// onAdmin serves the admin API (list, cancel).
func (o *otaManager) onAdmin(r otaAdminReq) otaAdminResp {
	if r.cancel != "" {
		j := o.jobs[r.cancel]
		if j == nil {
			return otaAdminResp{err: fmt.Errorf("OTA job %q: %w", r.cancel, admin.ErrNotFound)}
		}
		if isFinal(j.rec.State) {
			return otaAdminResp{jobs: []admin.OTAJob{jobView(j)},
				err: fmt.Errorf("OTA job %q already %s: %w", r.cancel, j.rec.State, admin.ErrConflict)}
		}
		o.cancelJob(j, admin.OTACanceled, "canceled by an operator")
		return otaAdminResp{jobs: []admin.OTAJob{jobView(j)}}
	}
	var match []*otaJob
	for _, list := range [][]*otaJob{o.finished, o.pending} {
		for _, j := range list {
			if r.state == "" || j.rec.State == r.state {
				match = append(match, j)
			}
		}
	}
	slices.SortStableFunc(match, func(a, b *otaJob) int { return a.rec.Created.Compare(b.rec.Created) })
	resp := otaAdminResp{total: len(match)}
	if r.offset < len(match) {
		match = match[r.offset:]
		for _, j := range match[:min(r.limit, len(match))] {
			resp.jobs = append(resp.jobs, jobView(j))
		}
	}
	return resp
}

func jobView(j *otaJob) admin.OTAJob {
	off := j.rec.Offset
	if j.conn != nil {
		off = j.acked
	}
	return admin.OTAJob{
		ID: j.rec.ID, DeviceID: j.rec.DeviceID, EventType: j.rec.EventType, TaskID: j.rec.TaskID,
		Version: j.rec.Version, FileName: j.rec.FileName, Size: j.rec.FileSize, Sign: j.rec.Sign,
		State: j.rec.State, Offset: off, Attempts: j.rec.Attempts, ResultCode: j.rec.ResultCode,
		Description: j.rec.Description, Created: j.rec.Created, Updated: j.rec.Updated,
	}
}

// errOTAStopped answers admin calls when the OTA manager is not running.
var errOTAStopped = fmt.Errorf("the OTA manager is not running: %w", admin.ErrUnavailable)

// otaAdminTimeout bounds a list request, whose Backend method has no
// context.
const otaAdminTimeout = 5 * time.Second

// call hands r to the scheduler and waits for its answer.
func (o *otaManager) call(ctx context.Context, r otaAdminReq) otaAdminResp {
	r.reply = make(chan otaAdminResp, 1)
	select {
	case o.reqs <- r:
	case <-o.stopped:
		return otaAdminResp{err: errOTAStopped}
	case <-ctx.Done():
		return otaAdminResp{err: ctx.Err()}
	}
	select {
	case resp := <-r.reply:
		return resp
	case <-o.stopped:
		return otaAdminResp{err: errOTAStopped}
	case <-ctx.Done():
		return otaAdminResp{err: ctx.Err()}
	}
}

// OTAJobs implements admin.Backend.
func (b adminBackend) OTAJobs(state string, offset, limit int) ([]admin.OTAJob, int) {
	ctx, cancel := context.WithTimeout(context.Background(), otaAdminTimeout)
	defer cancel()
	resp := b.g.ota.call(ctx, otaAdminReq{state: state, offset: offset, limit: limit})
	return resp.jobs, resp.total
}

// CancelOTAJob implements admin.Backend.
func (b adminBackend) CancelOTAJob(ctx context.Context, id string) (admin.OTAJob, error) {
	resp := b.g.ota.call(ctx, otaAdminReq{cancel: id})
	var j admin.OTAJob
	if len(resp.jobs) > 0 {
		j = resp.jobs[0]
	}
	return j, resp.err
}
