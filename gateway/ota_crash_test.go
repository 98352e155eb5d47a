package gateway

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/subgate/subgate/northbound/iotdasim"
	"github.com/subgate/subgate/southbound/southboundtest"
)

// TestOTACrashChild is the gateway process of TestOTAKill9Resumes. It runs
// only when re-executed by that test, with the package server's CA file in
// OTA_CRASH_CA.
func TestOTACrashChild(t *testing.T) {
	runChild(t, "TestOTACrashChild",
		"SUBGATE_NORTHBOUND_MAX_MSGS_PER_SEC=1000",
		"SUBGATE_SOUTHBOUND_CODEC=binary",
		"SUBGATE_SUBDEVICE_STATUS_DEBOUNCE=20ms",
		"SUBGATE_OTA_CA_FILE="+os.Getenv("OTA_CRASH_CA"),
		"SUBGATE_OTA_CHUNK_SIZE=4096",
		"SUBGATE_OTA_ACK_TIMEOUT=3s",
		"SUBGATE_OTA_PROGRESS_INTERVAL=20ms",
		"SUBGATE_OTA_RETRY_BACKOFF=50ms",
	)
}

// startOTAChild starts TestOTACrashChild with the package server's CA file
// ca (see startChild).
func startOTAChild(t *testing.T, simAddr, dir, ca string) (*exec.Cmd, string) {
	t.Helper()
	return startChild(t, "TestOTACrashChild", simAddr, dir, "OTA_CRASH_CA="+ca)
}

func otaDial(t *testing.T, addr, node string) *southboundtest.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := southboundtest.Dial(ctx, southboundtest.Options{Addr: addr, Codec: "binary", NodeID: node, FwVersion: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestOTAKill9Resumes: the gateway is killed with SIGKILL in the middle of
// a push and restarted on the same store: the job is loaded again, the
// package comes from the cache (no second download), and the device
// continues from the bytes it holds.
func TestOTAKill9Resumes(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	sim := startSim(t, "127.0.0.1:0")
	srv := startOTAServer(t, sim)
	dir := t.TempDir()
	child, addr := startOTAChild(t, sim.Addr(), dir, srv.CAFile())
	c := otaDial(t, addr, "crashota")
	devID := testProduct + "_crashota"
	waitSim(t, sim, "ONLINE", func(v *iotdasim.View) bool { return v.Status(testGW, devID) == "ONLINE" })

	data := otaPackage(t, 200_000)
	ch := serveOTA(c, southboundtest.OTAOptions{StopAt: 100_000})
	if _, err := srv.StartOTA(testGW, []string{devID}, iotdasim.OTAPackage{Name: "k.bin", Version: "v2", Data: data}); err != nil {
		t.Fatal(err)
	}
	r := waitServed(t, ch)
	if !errors.Is(r.err, southboundtest.ErrOTAStopped) {
		t.Fatalf("first part: %v", r.err)
	}
	held := r.im
	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	child.Wait()
	c.Close()

	_, addr = startOTAChild(t, sim.Addr(), dir, srv.CAFile())
	c2 := otaDial(t, addr, "crashota")
	r = waitServed(t, serveOTA(c2, southboundtest.OTAOptions{Held: held}))
	if r.err != nil {
		t.Fatal(r.err)
	}
	if !bytes.Equal(r.im.Data, data) {
		t.Fatalf("image differs after the restart (%d bytes)", len(r.im.Data))
	}
	var final bool
	waitSim(t, sim, "success after the restart", func(v *iotdasim.View) bool {
		p, ok := finalProgress(v, devID)
		final = ok && p.ResultCode == 0 && p.Version == "v2"
		return ok
	})
	if !final {
		t.Fatal("final report is not a success")
	}
	if st := srv.Stats("k.bin"); st.Requests != 1 {
		t.Errorf("package downloaded %d times across the restart", st.Requests)
	}
	t.Logf("device held %d of %d bytes at the kill; resumed and finished after the restart", len(held.Data), len(data))
}
