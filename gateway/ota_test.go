package gateway

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/subgate/subgate/gateway/admin"
	"github.com/subgate/subgate/northbound/iotda"
	"github.com/subgate/subgate/northbound/iotdasim"
	"github.com/subgate/subgate/southbound/frame"
	"github.com/subgate/subgate/southbound/southboundtest"
)

// otaPackage returns n random bytes.
func otaPackage(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// startOTAServer starts the simulator's HTTPS package server.
func startOTAServer(t testing.TB, sim *iotdasim.Sim) *iotdasim.OTAServer {
	t.Helper()
	srv, err := iotdasim.NewOTAServer(sim, iotdasim.OTAServerConfig{Dir: t.TempDir(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

// otaConfig is testConfig with short OTA timings and the test CA.
func otaConfig(t testing.TB, sim *iotdasim.Sim, srv *iotdasim.OTAServer, codec string) Config {
	cfg := testConfig(t, sim.Addr(), codec)
	cfg.OTA.CAFile = srv.CAFile()
	cfg.OTA.ChunkSize = 4096
	cfg.OTA.Window = 4
	cfg.OTA.AckTimeout = 3 * time.Second
	cfg.OTA.ApplyTimeout = 3 * time.Second
	cfg.OTA.ProgressInterval = 20 * time.Millisecond
	cfg.OTA.RetryBackoff = 50 * time.Millisecond
	return cfg
}

// otaLogin dials a native device that reports fw_version v1 and waits
// until it is ONLINE at the platform.
func (h *harness) otaLogin(codec, node string) (*southboundtest.Client, string) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := southboundtest.Dial(ctx, southboundtest.Options{Addr: h.addr(), Codec: codec, NodeID: node,
		FwVersion: "v1", SwVersion: "s1"})
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	w, err := c.Hello(ctx)
	if err != nil {
		h.t.Fatalf("hello %s: %v", node, err)
	}
	id := w.DeviceID
	h.waitSim(node+" ONLINE", func(v *iotdasim.View) bool { return v.Status(testGW, id) == "ONLINE" })
	return c, id
}

// serveOTA runs ServeOTA in the background.
func serveOTA(c *southboundtest.Client, o southboundtest.OTAOptions) chan otaServed {
	ch := make(chan otaServed, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		im, err := c.ServeOTA(ctx, o)
		ch <- otaServed{im, err}
	}()
	return ch
}

type otaServed struct {
	im  *southboundtest.OTAImage
	err error
}

func waitServed(t testing.TB, ch chan otaServed) otaServed {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(20 * time.Second):
		t.Fatal("device did not finish the upgrade")
		return otaServed{}
	}
}

// finalProgress returns the last upgrade_progress_report of a device with
// a final result (result_code != 0 or progress 100).
func finalProgress(v *iotdasim.View, id string) (iotda.ProgressParas, bool) {
	ps := v.UpgradeProgress(id)
	for i := len(ps) - 1; i >= 0; i-- {
		if ps[i].ResultCode != 0 || ps[i].Progress == 100 {
			return ps[i], true
		}
	}
	return iotda.ProgressParas{}, false
}

func (h *harness) waitFinal(id string) iotda.ProgressParas {
	h.t.Helper()
	var p iotda.ProgressParas
	h.waitSim("final OTA report for "+id, func(v *iotdasim.View) bool {
		var ok bool
		p, ok = finalProgress(v, id)
		return ok
	})
	return p
}

// TestOTAHappyPath upgrades three devices with one package over jsonl
// (base64 chunks) and binary (raw chunks): the package is downloaded once,
// every device gets the exact bytes, the platform sees progress, success
// with the package version and a version report, and the registry holds
// the new version. Over binary the first download is cut off mid-body and
// resumed with HTTP Range.
func TestOTAHappyPath(t *testing.T) {
	for _, codec := range []string{"jsonl", "binary"} {
		t.Run(codec, func(t *testing.T) {
			sim := startSim(t, "127.0.0.1:0")
			srv := startOTAServer(t, sim)
			h := startGateway(t, sim, otaConfig(t, sim, srv, codec))
			data := otaPackage(t, 150_000)
			var ids []string
			var served []chan otaServed
			for _, n := range []string{"ota1", "ota2", "ota3"} {
				c, id := h.otaLogin(codec, n)
				ids = append(ids, id)
				served = append(served, serveOTA(c, southboundtest.OTAOptions{}))
			}
			p := iotdasim.OTAPackage{Name: "fw-" + codec + ".bin", Version: "v2", Data: data, TaskID: "task-1"}
			if codec == "binary" {
				p.CutAfter = 50_000
			}
			if _, err := srv.StartOTA(testGW, ids, p); err != nil {
				t.Fatal(err)
			}
			for i, ch := range served {
				r := waitServed(t, ch)
				if r.err != nil {
					t.Fatalf("device %d: %v", i, r.err)
				}
				if !bytes.Equal(r.im.Data, data) || r.im.Version != "v2" {
					t.Fatalf("device %d got %d bytes of version %q", i, len(r.im.Data), r.im.Version)
				}
			}
			for _, id := range ids {
				if p := h.waitFinal(id); p.ResultCode != 0 || p.Progress != 100 || p.Version != "v2" {
					t.Fatalf("%s: final report %+v", id, p)
				}
				h.waitSim("version report "+id, func(v *iotdasim.View) bool {
					for _, r := range v.VersionReports(id) {
						if r.FwVersion == "v2" {
							return true
						}
					}
					return false
				})
				sim.View(func(v *iotdasim.View) {
					ps := v.UpgradeProgress(id)
					if len(ps) < 2 || ps[0].ResultCode != 0 || ps[0].Progress >= 100 {
						t.Errorf("%s: no intermediate progress before the result: %+v", id, ps)
					}
				})
				if d, _ := h.gw.Registry().ByID(id); d.FwVersion != "v2" {
					t.Errorf("%s: registry fw_version %q", id, d.FwVersion)
				}
			}
			st := srv.Stats(p.Name)
			if codec == "binary" {
				if st.Requests != 2 || st.RangeRequests != 1 || st.Cut != 1 {
					t.Errorf("resumed download: %+v", st)
				}
			} else if st.Requests != 1 {
				t.Errorf("package requested %d times, want once: %+v", st.Requests, st)
			}
			if got := metricValue(t, h, "subgate_ota_downloaded_bytes_total"); got != float64(len(data)) {
				t.Errorf("downloaded %v bytes, want %d", got, len(data))
			}
			if got := metricValue(t, h, "subgate_ota_pushed_bytes_total"); got < float64(3*len(data)) {
				t.Errorf("pushed %v bytes, want >= %d", got, 3*len(data))
			}
			waitCounter(t, h, "subgate_ota_results_total", 3)
			jobs, total := adminBackend{h.gw}.OTAJobs(admin.OTASucceeded, 0, 10)
			if total != 3 || len(jobs) != 3 || jobs[0].Offset != int64(len(data)) || jobs[0].TaskID != "task-1" {
				t.Errorf("succeeded jobs: %d %+v", total, jobs)
			}
		})
	}
}

// TestOTAPackageChecks: a wrong sign or size fails with result code 7
// (iotda §4.4), a sign of the wrong length fails without a download, and
// a refused token (HTTP 401) fails with 255; no device gets an offer.
func TestOTAPackageChecks(t *testing.T) {
	sim := startSim(t, "127.0.0.1:0")
	srv := startOTAServer(t, sim)
	h := startGateway(t, sim, otaConfig(t, sim, srv, "jsonl"))
	data := otaPackage(t, 10_000)
	cases := []struct {
		node string
		p    iotdasim.OTAPackage
		code int
		desc string
		reqs int
	}{
		{"badsign", iotdasim.OTAPackage{Sign: strings.Repeat("0", 64)}, 7, "does not match sign", 1},
		{"shortsign", iotdasim.OTAPackage{Sign: "abc123"}, 7, "64 hex digits", 0},
		{"badsize", iotdasim.OTAPackage{FileSize: 10_001}, 7, "file_size is 10001", 1},
		{"badtoken", iotdasim.OTAPackage{Token: "expired-token"}, 255, "HTTP 401", 0},
	}
	var clients []*southboundtest.Client
	for _, c := range cases {
		cl, id := h.otaLogin("jsonl", c.node)
		clients = append(clients, cl)
		p := c.p
		p.Name, p.Version, p.Data = c.node+".bin", "v9", data
		if _, err := srv.StartOTA(testGW, []string{id}, p); err != nil {
			t.Fatal(err)
		}
		got := h.waitFinal(id)
		if got.ResultCode != c.code || got.Version != "v9" || !strings.Contains(got.Description, c.desc) {
			t.Errorf("%s: report %+v, want code %d with %q", c.node, got, c.code, c.desc)
		}
		if st := srv.Stats(p.Name); st.Requests != c.reqs {
			t.Errorf("%s: %d requests, want %d (%+v)", c.node, st.Requests, c.reqs, st)
		}
		if c.node == "badtoken" && srv.Stats(p.Name).Unauthorized != 1 {
			t.Errorf("badtoken: %+v", srv.Stats(p.Name))
		}
	}
	// No device was offered anything: a ping is answered with a pong,
	// which is the first frame each one gets.
	for i, cl := range clients {
		if err := cl.Send(frame.Frame{Type: frame.TypePing, Seq: 7}); err != nil {
			t.Fatal(err)
		}
		if f := recv(t, cl); f.Type != frame.TypePong {
			t.Errorf("device %d got %s before the pong", i, f.Type)
		}
	}
	jobs, total := adminBackend{h.gw}.OTAJobs(admin.OTAFailed, 0, 10)
	if total != len(cases) || len(jobs) != len(cases) {
		t.Errorf("failed jobs: %d %+v", total, jobs)
	}
}

// TestOTADeviceDisconnectResumes: a device that drops its connection in
// the middle of the transfer gets the rest, from its own offset, when it
// is back.
func TestOTADeviceDisconnectResumes(t *testing.T) {
	sim := startSim(t, "127.0.0.1:0")
	srv := startOTAServer(t, sim)
	h := startGateway(t, sim, otaConfig(t, sim, srv, "binary"))
	data := otaPackage(t, 200_000)
	c, id := h.otaLogin("binary", "flaky")
	ch := serveOTA(c, southboundtest.OTAOptions{StopAt: 80_000})
	if _, err := srv.StartOTA(testGW, []string{id}, iotdasim.OTAPackage{Name: "r.bin", Version: "v2", Data: data}); err != nil {
		t.Fatal(err)
	}
	r := waitServed(t, ch)
	if !errors.Is(r.err, southboundtest.ErrOTAStopped) {
		t.Fatalf("first connection: %v", r.err)
	}
	held := r.im
	c.Close()
	h.waitSim("OFFLINE", func(v *iotdasim.View) bool { return v.Status(testGW, id) == "OFFLINE" })

	c2, _ := h.otaLogin("binary", "flaky")
	r = waitServed(t, serveOTA(c2, southboundtest.OTAOptions{Held: held}))
	if r.err != nil {
		t.Fatal(r.err)
	}
	if !bytes.Equal(r.im.Data, data) {
		t.Fatalf("image differs after resume (%d bytes)", len(r.im.Data))
	}
	if p := h.waitFinal(id); p.ResultCode != 0 || p.Version != "v2" {
		t.Fatalf("final report %+v", p)
	}
	// Resumed, not restarted: at most one window was sent twice.
	pushed := metricValue(t, h, "subgate_ota_pushed_bytes_total")
	if limit := float64(len(data) + 4*4096*2); pushed > limit {
		t.Errorf("pushed %v bytes for a %d-byte package: the transfer restarted", pushed, len(data))
	}
	if st := srv.Stats("r.bin"); st.Requests != 1 {
		t.Errorf("package downloaded %d times", st.Requests)
	}
}

// TestOTADeviceFailures: a device that fails the install or refuses the
// offer is reported with its own result code; the registry keeps the old
// version.
func TestOTADeviceFailures(t *testing.T) {
	sim := startSim(t, "127.0.0.1:0")
	srv := startOTAServer(t, sim)
	h := startGateway(t, sim, otaConfig(t, sim, srv, "jsonl"))
	data := otaPackage(t, 20_000)
	c1, id1 := h.otaLogin("jsonl", "failer")
	c2, id2 := h.otaLogin("jsonl", "refuser")
	c3, id3 := h.otaLogin("jsonl", "liar")
	ch1 := serveOTA(c1, southboundtest.OTAOptions{Fail: true, FailCode: 9})
	ch2 := serveOTA(c2, southboundtest.OTAOptions{Refuse: 3})
	ch3 := serveOTA(c3, southboundtest.OTAOptions{NewVersion: "v1"})
	if _, err := srv.StartOTA(testGW, []string{id1, id2, id3}, iotdasim.OTAPackage{Name: "f.bin", Version: "v2", Data: data}); err != nil {
		t.Fatal(err)
	}
	for _, ch := range []chan otaServed{ch1, ch2, ch3} {
		if r := waitServed(t, ch); r.err != nil {
			t.Fatal(r.err)
		}
	}
	for _, c := range []struct {
		id   string
		code int
		desc string
	}{
		{id1, 9, "install failed on purpose"},
		{id2, 3, "refused"},
		{id3, iotda.OTAInstallFailed, `runs version "v1"`},
	} {
		p := h.waitFinal(c.id)
		if p.ResultCode != c.code || p.Version != "v2" || !strings.Contains(p.Description, c.desc) {
			t.Errorf("%s: %+v, want %d %q", c.id, p, c.code, c.desc)
		}
		if d, _ := h.gw.Registry().ByID(c.id); d.FwVersion == "v2" {
			t.Errorf("%s: registry version %q after a failure", c.id, d.FwVersion)
		}
	}
}

// TestOTADemoCodec: a demo device cannot carry firmware; the platform is
// told so with result code 8 and nothing is downloaded.
func TestOTADemoCodec(t *testing.T) {
	sim := startSim(t, "127.0.0.1:0")
	srv := startOTAServer(t, sim)
	h := startGateway(t, sim, otaConfig(t, sim, srv, "demo"))
	devID := testProduct + "_demo1"
	c := h.dial("demo", devID)
	if err := c.Send(frame.Frame{Type: frame.TypeMessage, NodeID: devID, Content: []byte("hello")}); err != nil {
		t.Fatal(err)
	}
	h.waitSim("demo device ONLINE", func(v *iotdasim.View) bool { return v.Status(testGW, devID) == "ONLINE" })
	if _, err := srv.StartOTA(testGW, []string{devID}, iotdasim.OTAPackage{Name: "d.bin", Version: "v2", Data: otaPackage(t, 1000)}); err != nil {
		t.Fatal(err)
	}
	p := h.waitFinal(devID)
	if p.ResultCode != iotda.OTAUnsupportedPackage || !strings.Contains(p.Description, "demo") {
		t.Fatalf("report %+v", p)
	}
	if st := srv.Stats("d.bin"); st.Requests != 0 {
		t.Errorf("package downloaded for a demo device: %+v", st)
	}
}

// TestOTACancelAndRetry: a device that stops acknowledging is retried
// after the ack timeout (a new offer); an operator's cancel ends the job,
// the device gets an error frame naming it and the platform a failure.
func TestOTACancelAndRetry(t *testing.T) {
	sim := startSim(t, "127.0.0.1:0")
	srv := startOTAServer(t, sim)
	cfg := otaConfig(t, sim, srv, "jsonl")
	cfg.OTA.AckTimeout = 300 * time.Millisecond
	cfg.OTA.MaxAttempts = 5
	h := startGateway(t, sim, cfg)
	c, id := h.otaLogin("jsonl", "stuck")
	if _, err := srv.StartOTA(testGW, []string{id}, iotdasim.OTAPackage{Name: "c.bin", Version: "v2", Data: otaPackage(t, 50_000)}); err != nil {
		t.Fatal(err)
	}
	offer := recvType(t, c, frame.TypeOTAOffer)
	if err := c.Send(frame.Frame{Type: frame.TypeOTAAck, RequestID: offer.RequestID}); err != nil {
		t.Fatal(err)
	}
	// Chunks arrive; the device never acknowledges them.
	if f := recvType(t, c, frame.TypeOTAChunk); f.Offset != 0 || len(f.Content) == 0 {
		t.Fatalf("first chunk %+v", f)
	}
	again := recvType(t, c, frame.TypeOTAOffer)
	if again.RequestID != offer.RequestID {
		t.Fatalf("retry offered job %q, want %q", again.RequestID, offer.RequestID)
	}
	jobs, _ := adminBackend{h.gw}.OTAJobs("", 0, 10)
	if len(jobs) != 1 || jobs[0].Attempts < 1 {
		t.Fatalf("jobs after a timeout: %+v", jobs)
	}
	be := adminBackend{h.gw}
	j, err := be.CancelOTAJob(ctxT(t), offer.RequestID)
	if err != nil || j.State != admin.OTACanceled {
		t.Fatalf("cancel: %+v %v", j, err)
	}
	f := recvType(t, c, frame.TypeError)
	if f.RequestID != offer.RequestID || !strings.Contains(f.Reason, "canceled by an operator") {
		t.Fatalf("error frame %+v", f)
	}
	if p := h.waitFinal(id); p.ResultCode != iotda.OTAInternalError || !strings.Contains(p.Description, "canceled") {
		t.Fatalf("report %+v", p)
	}
	if _, err := be.CancelOTAJob(ctxT(t), offer.RequestID); !errors.Is(err, admin.ErrConflict) {
		t.Errorf("second cancel: %v", err)
	}
	if _, err := be.CancelOTAJob(ctxT(t), "ota-none"); !errors.Is(err, admin.ErrNotFound) {
		t.Errorf("unknown job: %v", err)
	}
	if _, total := be.OTAJobs(admin.OTACanceled, 0, 10); total != 1 {
		t.Errorf("canceled jobs: %d", total)
	}
}

// TestOTAJobsRunConcurrentlyWithinTheLimit: with max_concurrent 1 the
// second device waits for the first, and both succeed; a package found in
// the cache is not downloaded again for a later task.
func TestOTAJobsRunConcurrentlyWithinTheLimit(t *testing.T) {
	sim := startSim(t, "127.0.0.1:0")
	srv := startOTAServer(t, sim)
	cfg := otaConfig(t, sim, srv, "binary")
	cfg.OTA.MaxConcurrent = 1
	h := startGateway(t, sim, cfg)
	data := otaPackage(t, 30_000)
	var wg sync.WaitGroup
	var ids []string
	for _, n := range []string{"q1", "q2"} {
		c, id := h.otaLogin("binary", n)
		ids = append(ids, id)
		ch := serveOTA(c, southboundtest.OTAOptions{})
		wg.Go(func() {
			if r := waitServed(t, ch); r.err != nil {
				t.Error(r.err)
			}
		})
	}
	p := iotdasim.OTAPackage{Name: "l.bin", Version: "v2", Data: data}
	if _, err := srv.StartOTA(testGW, ids, p); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for _, id := range ids {
		if r := h.waitFinal(id); r.ResultCode != 0 {
			t.Fatalf("%s: %+v", id, r)
		}
	}
	// A second task with the same package: served from the cache.
	c3, id3 := h.otaLogin("binary", "q3")
	ch := serveOTA(c3, southboundtest.OTAOptions{})
	if _, err := srv.StartOTA(testGW, []string{id3}, p); err != nil {
		t.Fatal(err)
	}
	if r := waitServed(t, ch); r.err != nil {
		t.Fatal(r.err)
	}
	if r := h.waitFinal(id3); r.ResultCode != 0 {
		t.Fatalf("%+v", r)
	}
	if st := srv.Stats("l.bin"); st.Requests != 1 {
		t.Errorf("package requested %d times", st.Requests)
	}
}

// TestOTAOnlineChangeLost: a device with a waiting job connects while the
// OTA manager's connection queue is full, so its online change is dropped
// (counted as conn_queue_full). The manager's tick still finds the device
// connected and the upgrade runs.
func TestOTAOnlineChangeLost(t *testing.T) {
	sim := startSim(t, "127.0.0.1:0")
	srv := startOTAServer(t, sim)
	cfg := otaConfig(t, sim, srv, "binary")
	cfg.OTA.Queue = 16 // the smallest allowed
	h := startGateway(t, sim, cfg)
	data := otaPackage(t, 30_000)
	c, id := h.otaLogin("binary", "late")
	c.Close()
	h.waitSim("OFFLINE", func(v *iotdasim.View) bool { return v.Status(testGW, id) == "OFFLINE" })
	if _, err := srv.StartOTA(testGW, []string{id}, iotdasim.OTAPackage{Name: "late.bin", Version: "v2", Data: data}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "job queued with its package downloaded", func() bool {
		jobs, _ := adminBackend{h.gw}.OTAJobs(admin.OTAQueued, 0, 10)
		return len(jobs) == 1 && srv.Stats("late.bin").Requests == 1
	})

	// Hold the manager inside an admin request whose answer nobody reads
	// yet, fill its connection queue, and let the device connect.
	o := h.gw.ota
	held := otaAdminReq{state: admin.OTAQueued, limit: 1, reply: make(chan otaAdminResp)}
	o.reqs <- held
	waitFor(t, "the manager took the request", func() bool { return len(o.reqs) == 0 })
	for full := false; !full; {
		select {
		case o.conns <- otaConnMsg{deviceID: "nobody"}:
		default:
			full = true
		}
	}
	dropped := metricValue(t, h, "subgate_ota_dropped_total")
	c2, _ := h.otaLogin("binary", "late")
	if got := metricValue(t, h, "subgate_ota_dropped_total"); got != dropped+1 {
		t.Fatalf("dropped changes %v -> %v: the online change was not dropped", dropped, got)
	}
	ch := serveOTA(c2, southboundtest.OTAOptions{})
	<-held.reply

	r := waitServed(t, ch)
	if r.err != nil {
		t.Fatal(r.err)
	}
	if !bytes.Equal(r.im.Data, data) {
		t.Fatal("image differs")
	}
	if p := h.waitFinal(id); p.ResultCode != 0 || p.Version != "v2" {
		t.Fatalf("final report %+v", p)
	}
}
