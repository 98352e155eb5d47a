package gateway

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/subgate/subgate/northbound/iotdasim"
	"github.com/subgate/subgate/southbound/southboundtest"
)

// TestOTACrashChild is the gateway process of TestOTAKill9Resumes. It runs
// only when re-executed by that test.
func TestOTACrashChild(t *testing.T) {
	if os.Getenv("SUBGATE_OTA_CRASH_CHILD") == "" {
		t.Skip("helper process of TestOTAKill9Resumes")
	}
	env := []string{
		"SUBGATE_NORTHBOUND_SERVER=tcp://" + os.Getenv("OTA_CRASH_SIM"),
		"SUBGATE_NORTHBOUND_DEVICE_ID=" + testGW,
		"SUBGATE_NORTHBOUND_SECRET=" + testSecret,
		"SUBGATE_NORTHBOUND_MIN_BACKOFF=50ms",
		"SUBGATE_NORTHBOUND_MAX_BACKOFF=200ms",
		"SUBGATE_NORTHBOUND_MAX_MSGS_PER_SEC=1000",
		"SUBGATE_SOUTHBOUND_LISTEN=127.0.0.1:0",
		"SUBGATE_SOUTHBOUND_CODEC=binary",
		"SUBGATE_SUBDEVICE_DEFAULT_PRODUCT_ID=" + testProduct,
		"SUBGATE_SUBDEVICE_STATUS_DEBOUNCE=20ms",
		"SUBGATE_ADMIN_LISTEN=",
		"SUBGATE_STORE_DIR=" + os.Getenv("OTA_CRASH_DIR"),
		"SUBGATE_OTA_CA_FILE=" + os.Getenv("OTA_CRASH_CA"),
		"SUBGATE_OTA_CHUNK_SIZE=4096",
		"SUBGATE_OTA_ACK_TIMEOUT=3s",
		"SUBGATE_OTA_PROGRESS_INTERVAL=20ms",
		"SUBGATE_OTA_RETRY_BACKOFF=50ms",
	}
	cfg, err := LoadConfig("", env)
	if err != nil {
		t.Fatal(err)
	}
	gw, err := New(cfg, Deps{Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	go func() {
		<-gw.Ready()
		fmt.Printf("ADDR %s\n", gw.SouthboundAddr())
	}()
	if err := gw.Run(ctx); err != nil {
		t.Fatal(err)
	}
}

func startOTAChild(t *testing.T, simAddr, dir, ca string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestOTACrashChild$", "-test.v")
	cmd.Env = append(os.Environ(), "SUBGATE_OTA_CRASH_CHILD=1", "OTA_CRASH_SIM="+simAddr, "OTA_CRASH_DIR="+dir, "OTA_CRASH_CA="+ca)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "ADDR "); ok {
				addr <- a
			}
		}
	}()
	select {
	case a := <-addr:
		return cmd, a
	case <-time.After(30 * time.Second):
		t.Fatal("child gateway did not start")
		return nil, ""
	}
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
