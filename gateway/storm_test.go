package gateway

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/subgate/subgate/northbound/iotda"
	"github.com/subgate/subgate/northbound/iotdasim"
	"github.com/subgate/subgate/southbound/frame"
	"github.com/subgate/subgate/southbound/southboundtest"
	"github.com/subgate/subgate/store"
	"github.com/subgate/subgate/subdevice"
)

// Sizes of the automated reconnect storm (issue 5, done-when 2, at a
// smaller scale; cmd/devicesim/scripts/bench-storm.sh runs the full one).
const (
	stormKnown     = 500
	stormReconnect = 200
	// stormShutdownSlack is what the one-second window check allows above
	// the paced rate: the shutdown flush is not paced (every logged-out
	// device's OFFLINE goes out at once, docs/architecture.md "Shutdown"),
	// and it may share a window with the paced reports before it.
	stormShutdownSlack = stormReconnect // the unpaced shutdown flush reports every connected device at once
)

func stormNode(i int) string { return "storm" + strconv.Itoa(i) }

// seedStorm gives the platform and the gateway's store the same
// stormKnown sub-devices, OFFLINE on both sides, as after an earlier run.
func seedStorm(t *testing.T, sim *iotdasim.Sim, dir string) {
	t.Helper()
	infos := make([]iotda.DeviceInfo, stormKnown)
	for i := range infos {
		infos[i] = iotda.DeviceInfo{NodeID: stormNode(i), ProductID: testProduct, Status: iotda.StatusOffline}
	}
	added, version, err := sim.AddDevices(testGW, infos)
	if err != nil {
		t.Fatal(err)
	}
	devs := make([]subdevice.Device, len(added))
	for i, d := range added {
		devs[i] = subdevice.Device{NodeID: d.NodeID, DeviceID: d.DeviceID, ProductID: d.ProductID, Status: subdevice.Offline}
	}
	st, err := store.Open(store.Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	if err := st.PutDevices(ctx, devs); err != nil {
		t.Fatal(err)
	}
	if err := st.SetVersion(ctx, version); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
}

// connectAll dials and says hello for node ids stormNode(0..n-1) all at
// once and returns the clients.
func connectAll(t *testing.T, addr string, n int) []*southboundtest.Client {
	t.Helper()
	clients := make([]*southboundtest.Client, n)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var eg errgroup.Group
	for i := range clients {
		eg.Go(func() error {
			c, err := southboundtest.Dial(ctx, southboundtest.Options{Addr: addr, Codec: frame.NameJSONL, NodeID: stormNode(i)})
			if err != nil {
				return err
			}
			clients[i] = c
			w, err := c.Hello(ctx)
			if err != nil {
				return fmt.Errorf("hello %s: %w", stormNode(i), err)
			}
			if w.DeviceID != testProduct+"_"+stormNode(i) {
				return fmt.Errorf("hello %s: device id %q", stormNode(i), w.DeviceID)
			}
			return nil
		})
	}
	err := eg.Wait()
	t.Cleanup(func() {
		for _, c := range clients {
			if c != nil {
				c.Close()
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return clients
}

// settled reports whether exactly node ids below online are ONLINE at
// the platform and every other known sub-device is OFFLINE.
func settled(v *iotdasim.View, online int) bool {
	s, _ := v.Summary(testGW, time.Time{}, iotdasim.NodeRange{Prefix: "storm", To: online})
	return s.Devices == stormKnown && s.Matching[iotda.StatusOnline] == online && s.Others[iotda.StatusOffline] == stormKnown-online
}

// TestReconnectStorm: with stormKnown records, stormReconnect devices are
// connected, the gateway restarts and all of them reconnect at once. The
// platform must end with exactly those ONLINE and the rest OFFLINE, every
// status message ≤100 entries (iotda §3.3) and the entries within any one
// second at most the reporter's pace plus the unpaced shutdown flush.
func TestReconnectStorm(t *testing.T) {
	sim := startSim(t, "127.0.0.1:0")
	cfg := testConfig(t, sim.Addr(), frame.NameJSONL)
	// The default debounce: the storm is reported as it would be in
	// production. A short startup grace: the OFFLINE re-report of the
	// devices that did not come back is part of the storm.
	cfg.Subdevice.StatusDebounce = time.Second
	cfg.Subdevice.StartupGrace = time.Second
	seedStorm(t, sim, cfg.Store.Dir)

	// First run: the devices come online, then the gateway stops and
	// reports them OFFLINE on the way out.
	h := startGateway(t, sim, cfg)
	clients := connectAll(t, h.addr(), stormReconnect)
	h.waitSim("first run settled", func(v *iotdasim.View) bool { return settled(v, stormReconnect) })
	stopAt := time.Now()
	if err := h.stop(); err != nil {
		t.Fatalf("first run: %v", err)
	}
	for _, c := range clients {
		c.Close()
	}
	waitSim(t, sim, "all OFFLINE after the shutdown", func(v *iotdasim.View) bool { return settled(v, 0) })

	// Restart: everything reconnects at once.
	restartAt := time.Now()
	h = startGateway(t, sim, cfg)
	connectAll(t, h.addr(), stormReconnect)
	ctxS, cancelS := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancelS()
	if err := sim.WaitFor(ctxS, func(v *iotdasim.View) bool { return settled(v, stormReconnect) }); err != nil {
		// Enough to tell a slow reporter from a lost report next time.
		pending := metricValue(t, h, "subgate_subdevice_status_pending")
		free := metricValue(t, h, "subgate_northbound_quota_tokens")
		sim.View(func(v *iotdasim.View) {
			s, _ := v.Summary(testGW, time.Time{}, iotdasim.NodeRange{Prefix: "storm", To: stormReconnect})
			t.Fatalf("storm not settled: %+v; gateway: %v status entries pending, %v quota permits free", s, pending, free)
		})
	}
	took := time.Since(restartAt)
	// After the startup grace the gateway re-reports every known device
	// once (iotda §3.12); the picture must stay the same.
	var still bool
	sim.View(func(v *iotdasim.View) { still = settled(v, stormReconnect) })
	if !still {
		t.Fatal("platform picture changed after the re-report")
	}

	var all, storm iotdasim.ReportStats
	var errs []string
	sim.View(func(v *iotdasim.View) {
		s, _ := v.Summary(testGW, stopAt, iotdasim.NodeRange{})
		all = s.Reports
		s, _ = v.Summary(testGW, restartAt, iotdasim.NodeRange{})
		storm = s.Reports
		errs = v.Errors()
	})
	t.Logf("storm of %d of %d devices: settled %v after the restart; %d status messages, %d entries, max %d per message, max %d entries/s (since the shutdown: %d messages, max %d entries/s)",
		stormReconnect, stormKnown, took.Round(time.Millisecond), storm.Messages, storm.Entries, storm.MaxEntries,
		storm.MaxEntriesPerSecond, all.Messages, all.MaxEntriesPerSecond)
	if len(errs) > 0 {
		t.Fatalf("simulator saw protocol errors: %v", errs)
	}
	if all.MaxEntries > iotda.MaxStatusesPerMessage {
		t.Fatalf("a status message carried %d entries, want ≤ %d", all.MaxEntries, iotda.MaxStatusesPerMessage)
	}
	// The platform already has the 300 that stayed away as OFFLINE (the
	// shutdown reported them): only the 200 that came back are real
	// changes, and a device that came back must not be reported OFFLINE
	// and then ONLINE again (decisions D22).
	if storm.Entries != stormReconnect {
		t.Fatalf("%d status entries after the restart, want %d", storm.Entries, stormReconnect)
	}
	if minMsgs := (stormReconnect + iotda.MaxStatusesPerMessage - 1) / iotda.MaxStatusesPerMessage; storm.Messages > 3*minMsgs {
		t.Fatalf("%d status messages after the restart, want ≤ %d (3x the minimum %d)", storm.Messages, 3*minMsgs, minMsgs)
	}
	// Paced reports keep every one-second window at status_rate or below
	// (a sliding window, like the platform's count, iotda §3.3); only the
	// unpaced shutdown flush may add to a window.
	rate := int(cfg.Subdevice.StatusRate)
	if storm.MaxEntriesPerSecond > rate {
		t.Fatalf("%d status entries within one second after the restart, want ≤ %d", storm.MaxEntriesPerSecond, rate)
	}
	if limit := rate + stormShutdownSlack; all.MaxEntriesPerSecond > limit {
		t.Fatalf("%d status entries within one second, want ≤ %d (rate %d + %d shutdown slack)",
			all.MaxEntriesPerSecond, limit, rate, stormShutdownSlack)
	}
}

// TestReReportWhileConnecting: full status re-reports (after the startup
// grace, a reconnect, a resync) that overlap with devices connecting must
// never leave a connected device OFFLINE on the platform. The re-report
// runs here in a loop while stormReconnect devices log in.
func TestReReportWhileConnecting(t *testing.T) {
	sim := startSim(t, "127.0.0.1:0")
	cfg := testConfig(t, sim.Addr(), frame.NameJSONL)
	cfg.Subdevice.StatusDebounce = 50 * time.Millisecond
	cfg.Subdevice.StartupGrace = time.Hour // only the loop below re-reports
	seedStorm(t, sim, cfg.Store.Dir)
	h := startGateway(t, sim, cfg)
	h.waitSim("gateway connected", func(v *iotdasim.View) bool { return v.Connected(testGW) })

	stop := make(chan struct{})
	looped := make(chan int)
	// The status reporter's own flushes, as often as they can go: a
	// device's ONLINE is most at risk when it is sent while a re-report
	// is being computed.
	flushed := make(chan struct{})
	go func() {
		defer close(flushed)
		for {
			select {
			case <-stop:
				return
			default:
			}
			h.gw.status.flush(false, nil)
		}
	}()
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				looped <- n
				return
			default:
			}
			h.gw.status.reReportAll(false)
			n++
		}
	}()
	connectAll(t, h.addr(), stormReconnect)
	close(stop)
	<-flushed
	t.Logf("%d re-reports overlapped the logins", <-looped)
	h.waitSim("connected devices ONLINE, the rest OFFLINE", func(v *iotdasim.View) bool { return settled(v, stormReconnect) })
}
