package gateway

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/subgate/subgate/northbound/iotdasim"
	"github.com/subgate/subgate/southbound/frame"
	"github.com/subgate/subgate/southbound/southboundtest"
)

// benchDevices is "a few hundred devices" of issue 5's in-process
// benchmark; the 10,000-device run is cmd/devicesim/scripts/bench-commands.sh.
const benchDevices = 300

// startAnsweringDevices connects n binary-codec devices that answer every
// command with success, each from its own goroutine, until the benchmark
// ends. It returns their device ids once the platform has them ONLINE.
func startAnsweringDevices(b *testing.B, h *harness, n int) []string {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	b.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	ids := make([]string, n)
	clients := make([]*southboundtest.Client, n)
	hctx, hcancel := context.WithTimeout(ctx, 20*time.Second)
	defer hcancel()
	var eg errgroup.Group
	eg.SetLimit(64)
	for i := range n {
		eg.Go(func() error {
			c, err := southboundtest.Dial(hctx, southboundtest.Options{Addr: h.addr(), Codec: frame.NameBinary, NodeID: "bench" + strconv.Itoa(i)})
			if err != nil {
				return err
			}
			clients[i] = c
			w, err := c.Hello(hctx)
			ids[i] = w.DeviceID
			return err
		})
	}
	err := eg.Wait()
	b.Cleanup(func() {
		for _, c := range clients {
			if c != nil {
				c.Close()
			}
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				f, err := c.Recv(ctx)
				if err != nil {
					return
				}
				if f.Type != frame.TypeCommand {
					continue
				}
				if c.Send(frame.Frame{Type: frame.TypeCommandResponse, RequestID: f.RequestID, ResponseName: f.CommandName}) != nil {
					return
				}
			}
		}()
	}
	waitCtx, wcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer wcancel()
	if err := h.sim.WaitFor(waitCtx, func(v *iotdasim.View) bool {
		for _, id := range ids {
			if v.Status(testGW, id) != "ONLINE" {
				return false
			}
		}
		return true
	}); err != nil {
		b.Fatalf("devices not ONLINE at the platform: %v", err)
	}
	return ids
}

// BenchmarkCommandRoundTrip measures platform -> gateway -> device ->
// gateway -> platform over real loopback sockets, in one process: the
// simulator sends a command to one of benchDevices connected devices
// (round robin), the device answers, and the platform matches the
// response. "serial" has one command in flight; "inflight" keeps
// 8 x GOMAXPROCS in flight. It reports p50/p99 in ms and asserts nothing
// about speed.
func BenchmarkCommandRoundTrip(b *testing.B) {
	sim := startSim(b, "127.0.0.1:0")
	cfg := testConfig(b, sim.Addr(), frame.NameBinary)
	cfg.Northbound.MaxMsgsPerSec = 100_000 // the simulator only counts its cap
	h := startGateway(b, sim, cfg)
	ids := startAnsweringDevices(b, h, benchDevices)

	command := func(ctx context.Context, id string) (time.Duration, error) {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		t0 := time.Now()
		r, err := sim.Command(cctx, testGW, id, "bench", "ping", nil)
		if err == nil && r.ResultCode != 0 {
			err = errors.New(string(r.Paras))
		}
		return time.Since(t0), err
	}
	report := func(b *testing.B, lats []time.Duration) {
		slices.Sort(lats)
		at := func(p int) float64 {
			if len(lats) == 0 {
				return 0
			}
			return float64(lats[max((p*len(lats)+99)/100, 1)-1].Microseconds()) / 1000
		}
		b.ReportMetric(at(50), "p50_ms")
		b.ReportMetric(at(99), "p99_ms")
	}

	b.Run("serial", func(b *testing.B) {
		var lats []time.Duration
		i := 0
		b.ReportAllocs()
		for b.Loop() {
			lat, err := command(context.Background(), ids[i%len(ids)])
			if err != nil {
				b.Fatal(err)
			}
			lats = append(lats, lat)
			i++
		}
		report(b, lats)
	})
	b.Run("inflight", func(b *testing.B) {
		var (
			mu   sync.Mutex
			lats []time.Duration
			next int
		)
		b.ReportAllocs()
		b.SetParallelism(8)
		b.RunParallel(func(pb *testing.PB) {
			var mine []time.Duration
			for pb.Next() {
				mu.Lock()
				id := ids[next%len(ids)]
				next++
				mu.Unlock()
				lat, err := command(context.Background(), id)
				if err != nil {
					b.Error(err)
					return
				}
				mine = append(mine, lat)
			}
			mu.Lock()
			lats = append(lats, mine...)
			mu.Unlock()
		})
		report(b, lats)
	})
}
