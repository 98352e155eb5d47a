package gateway

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/subgate/subgate/northbound/iotdasim"
	"github.com/subgate/subgate/southbound/frame"
	"github.com/subgate/subgate/southbound/southboundtest"
)

// crashChildEnv names the test a re-executed test binary is to run as a
// child gateway process (see startChild); the child tests skip otherwise.
const crashChildEnv = "SUBGATE_CRASH_CHILD"

// TestCrashChild is the gateway process of TestKill9LosesNothing. It runs
// only when re-executed by that test.
func TestCrashChild(t *testing.T) {
	runChild(t, "TestCrashChild",
		// A low publish cap makes the outbox back up, so the kill hits
		// acknowledged items that were not published yet.
		"SUBGATE_NORTHBOUND_MAX_MSGS_PER_SEC=20",
		"SUBGATE_SOUTHBOUND_CODEC=jsonl",
	)
}

// runChild is the body of a child gateway test named name: unless this
// process was started by startChild for that test it skips; otherwise it
// runs a gateway on the simulator and store directory startChild passed,
// configured by the common child settings and then env, prints
// "ADDR <device address>" once ready, and returns on SIGTERM.
func runChild(t *testing.T, name string, env ...string) {
	if os.Getenv(crashChildEnv) != name {
		t.Skip("helper process started by startChild")
	}
	base := []string{
		"SUBGATE_NORTHBOUND_SERVER=tcp://" + os.Getenv("CRASH_SIM"),
		"SUBGATE_NORTHBOUND_DEVICE_ID=" + testGW,
		"SUBGATE_NORTHBOUND_SECRET=" + testSecret,
		"SUBGATE_NORTHBOUND_MIN_BACKOFF=50ms",
		"SUBGATE_NORTHBOUND_MAX_BACKOFF=200ms",
		"SUBGATE_SOUTHBOUND_LISTEN=127.0.0.1:0",
		"SUBGATE_SUBDEVICE_DEFAULT_PRODUCT_ID=" + testProduct,
		"SUBGATE_ADMIN_LISTEN=",
		"SUBGATE_STORE_DIR=" + os.Getenv("CRASH_DIR"),
	}
	cfg, err := LoadConfig("", append(base, env...))
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

// startChild re-executes the test binary to run the child gateway test
// name (see runChild) on simAddr with its store in dir, env added to the
// child's environment, and returns the process and the gateway's device
// address. The process is killed and waited for at cleanup.
func startChild(t *testing.T, name, simAddr, dir string, env ...string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+name+"$", "-test.v")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+name, "CRASH_SIM="+simAddr, "CRASH_DIR="+dir)
	cmd.Env = append(cmd.Env, env...)
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

// TestKill9LosesNothing: every report a device got an ack for reaches the
// platform, even when the gateway is killed with SIGKILL mid-stream and
// restarted on the same store (issue 4).
func TestKill9LosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	sim := startSim(t, "127.0.0.1:0")
	dir := t.TempDir()
	child, addr := startChild(t, "TestCrashChild", sim.Addr(), dir)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := southboundtest.Dial(ctx, southboundtest.Options{Addr: addr, Codec: "jsonl", NodeID: "crash1"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	w, err := c.Hello(ctx)
	if err != nil {
		t.Fatal(err)
	}
	devID := w.DeviceID
	waitSim(t, sim, "registered", func(v *iotdasim.View) bool { return v.Status(testGW, devID) == "ONLINE" })

	// Pipeline reports; count the acks; kill the gateway after 300 acks
	// while more are in flight.
	var acked atomic.Int64
	ackedSeqs := make(chan uint32, 10000)
	recvDone := make(chan struct{})
	go func() {
		defer close(recvDone)
		for {
			f, err := c.Recv(ctx)
			if err != nil {
				return
			}
			if f.Type == frame.TypeAck {
				ackedSeqs <- f.Seq
				if acked.Add(1) == 300 {
					child.Process.Signal(syscall.SIGKILL)
				}
			}
		}
	}()
	for i := uint32(1); i <= 2000; i++ {
		err := c.Send(frame.Frame{Type: frame.TypeProperties, Seq: i, Services: services("s", map[string]any{"n": i})})
		if err != nil {
			break
		}
		if i%50 == 0 {
			// Keep the device ahead of the gateway but bounded.
			for int64(i)-acked.Load() > 200 {
				select {
				case <-recvDone:
					goto killed
				case <-time.After(time.Millisecond):
				}
			}
		}
	}
killed:
	<-recvDone
	child.Wait()
	close(ackedSeqs)
	want := map[int]bool{}
	for s := range ackedSeqs {
		want[int(s)] = true
	}
	if len(want) < 300 {
		t.Fatalf("only %d acks before the kill", len(want))
	}

	// Restart on the same store: the outbox is replayed.
	startChild(t, "TestCrashChild", sim.Addr(), dir)
	waitSimLong(t, sim, func(v *iotdasim.View) bool {
		got := map[int]bool{}
		for _, p := range v.Properties(devID) {
			var m map[string]int
			json.Unmarshal(p.Services[0].Properties, &m)
			got[m["n"]] = true
		}
		for s := range want {
			if !got[s] {
				return false
			}
		}
		return true
	})
	t.Logf("%d acknowledged reports, all delivered after kill -9 and restart", len(want))
}

func waitSimLong(t *testing.T, sim *iotdasim.Sim, cond func(v *iotdasim.View) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := sim.WaitFor(ctx, cond); err != nil {
		t.Fatalf("acknowledged reports missing after restart: %v (simulator errors: %v)", err, sim.Errors())
	}
}
