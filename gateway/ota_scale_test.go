package gateway

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/subgate/subgate/northbound/iotda"
	"github.com/subgate/subgate/northbound/iotdasim"
	"github.com/subgate/subgate/southbound/southboundtest"
)

// TestOTAScale is issue 6's "done when" run: SUBGATE_OTA_SCALE simulated
// sub-devices (binary codec, real TCP) upgraded with one 1 MiB package in
// one run. It reports the figures (total time, bytes downloaded and
// pushed, successes seen by the simulator) and checks that the package was
// downloaded once and every device ended on the new version; it asserts no
// speed. Run it without -race:
//
//	SUBGATE_OTA_SCALE=1000 go test -run TestOTAScale -v ./gateway/
func TestOTAScale(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("SUBGATE_OTA_SCALE"))
	if n <= 0 {
		t.Skip("set SUBGATE_OTA_SCALE=1000 to run the OTA scale test")
	}
	sim := startSim(t, "127.0.0.1:0")
	srv := startOTAServer(t, sim)
	cfg := otaConfig(t, sim, srv, "binary")
	cfg.OTA.ChunkSize = 16 << 10
	cfg.OTA.AckTimeout = 60 * time.Second
	cfg.OTA.ApplyTimeout = 60 * time.Second
	cfg.OTA.ProgressInterval = time.Second
	cfg.Northbound.MaxMsgsPerSec = 2000
	h := startGateway(t, sim, cfg)

	// Connect every device, 64 dials at a time.
	clients := make([]*southboundtest.Client, n)
	ids := make([]string, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	var dialErr atomic.Value
	loginStart := time.Now()
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			c, err := southboundtest.Dial(ctx, southboundtest.Options{Addr: h.addr(), Codec: "binary",
				NodeID: fmt.Sprintf("scale-%05d", i), FwVersion: "v1"})
			if err == nil {
				f, herr := c.Hello(ctx)
				err = herr
				ids[i] = f.DeviceID
			}
			if err != nil {
				dialErr.Store(err)
				return
			}
			clients[i] = c
		})
	}
	wg.Wait()
	for _, c := range clients {
		if c != nil {
			t.Cleanup(func() { c.Close() })
		}
	}
	if err, _ := dialErr.Load().(error); err != nil {
		t.Fatalf("login: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := sim.WaitFor(ctx, func(v *iotdasim.View) bool {
		for _, id := range ids {
			if v.Status(testGW, id) != "ONLINE" {
				return false
			}
		}
		return true
	}); err != nil {
		t.Fatalf("devices not ONLINE: %v", err)
	}
	t.Logf("%d devices registered and ONLINE in %s", n, time.Since(loginStart).Round(time.Millisecond))

	data := otaPackage(t, 1<<20)
	var okDevices, failed atomic.Int64
	var firstErr atomic.Value
	for _, c := range clients {
		wg.Go(func() {
			im, err := c.ServeOTA(ctx, southboundtest.OTAOptions{})
			if err != nil || !im.Complete() {
				failed.Add(1)
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
				}
				return
			}
			okDevices.Add(1)
		})
	}
	start := time.Now()
	if _, err := srv.StartOTA(testGW, ids, iotdasim.OTAPackage{Name: "scale.bin", Version: "v2", Data: data}); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if failed.Load() > 0 {
		t.Fatalf("%d devices failed; first error: %v", failed.Load(), firstErr.Load())
	}
	var successes, progress int
	if err := sim.WaitFor(ctx, func(v *iotdasim.View) bool {
		final := map[string]bool{}
		progress = 0
		for _, e := range v.EventsOf(iotda.EventUpgradeProgress) {
			var p iotda.ProgressParas
			if e.Event.DecodeParasStrict(&p) != nil {
				continue
			}
			if p.ResultCode == 0 && p.Progress == 100 && p.Version == "v2" {
				final[e.ObjectDeviceID] = true
			} else if p.ResultCode == 0 {
				progress++
			}
		}
		successes = len(final)
		return successes == n
	}); err != nil {
		t.Fatalf("simulator saw %d successes of %d: %v", successes, n, err)
	}
	elapsed := time.Since(start)
	downloaded := metricValue(t, h, "subgate_ota_downloaded_bytes_total")
	pushed := metricValue(t, h, "subgate_ota_pushed_bytes_total")
	st := srv.Stats("scale.bin")
	onNew := 0
	for _, id := range ids {
		if d, _ := h.gw.Registry().ByID(id); d.FwVersion == "v2" {
			onNew++
		}
	}
	t.Logf("OTA scale: %d devices, package %d bytes, total %s", n, len(data), elapsed.Round(time.Millisecond))
	t.Logf("OTA scale: downloaded %.0f bytes in %d request(s); pushed %.0f bytes (%.2f x package x devices)",
		downloaded, st.Requests, pushed, pushed/float64(len(data)*n))
	t.Logf("OTA scale: simulator saw %d successes and %d intermediate progress reports; %d devices on v2 in the registry; devices verified %d images",
		successes, progress, onNew, okDevices.Load())
	if downloaded != float64(len(data)) || st.Requests != 1 {
		t.Errorf("package downloaded %.0f bytes in %d requests, want %d once", downloaded, st.Requests, len(data))
	}
	if onNew != n {
		t.Errorf("%d of %d devices on the new version", onNew, n)
	}
}
