package southbound

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sync/errgroup"

	"github.com/subgate/subgate/southbound/frame"
)

// The idle-connection measurement runs the devices in a child process (this
// test binary, started with idleChildEnv set), so that the server's heap is
// measured alone and each process needs one descriptor per connection.
const (
	idleChildEnv  = "SUBGATE_SOUTHBOUND_IDLE_CHILD" // the server address
	idleCountEnv  = "SUBGATE_SOUTHBOUND_IDLE_N"
	idleConnsEnv  = "SUBGATE_IDLE_CONNS" // BenchmarkIdleConns: how many (default 1000)
	idleChildDial = 64                   // dials in flight in the child
)

func TestMain(m *testing.M) {
	if addr := os.Getenv(idleChildEnv); addr != "" {
		os.Exit(idleChild(addr))
	}
	os.Exit(m.Run())
}

// idleChild opens idleCountEnv connections to addr, logs each in with the
// jsonl codec, prints "ready", and holds them until stdin closes.
func idleChild(addr string) int {
	n, err := strconv.Atoi(os.Getenv(idleCountEnv))
	if err != nil || n <= 0 {
		fmt.Fprintln(os.Stderr, "idle child: bad count:", err)
		return 2
	}
	conns := make([]net.Conn, n)
	var g errgroup.Group
	g.SetLimit(idleChildDial)
	codec := frame.JSONL()
	for i := range n {
		g.Go(func() error {
			// Spread the source addresses so a large n never runs out of
			// ports toward one destination.
			d := net.Dialer{Timeout: 30 * time.Second,
				LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, byte(1+i/20000), byte(1+i%200))}}
			c, err := d.Dial("tcp", addr)
			if err != nil {
				return err
			}
			conns[i] = c
			hello, err := codec.AppendEncode(nil, frame.Frame{Type: frame.TypeHello, NodeID: "idle-" + strconv.Itoa(i)})
			if err != nil {
				return err
			}
			_ = c.SetDeadline(time.Now().Add(60 * time.Second))
			if _, err := c.Write(hello); err != nil {
				return err
			}
			line, err := bufio.NewReaderSize(c, 256).ReadSlice('\n')
			if err != nil {
				return err
			}
			if f, _, err := codec.Decode(line, false); err != nil || f.Type != frame.TypeWelcome {
				return fmt.Errorf("conn %d: got %q", i, line)
			}
			return c.SetDeadline(time.Time{})
		})
	}
	err = g.Wait()
	if err != nil {
		fmt.Fprintln(os.Stderr, "idle child:", err)
	} else {
		fmt.Println("ready")
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		if c != nil {
			_ = c.Close()
		}
	}
	if err != nil {
		return 1
	}
	return 0
}

// nopHandler accepts every login and ignores frames.
type nopHandler struct{}

func (nopHandler) Login(c *Conn, f frame.Frame) error { c.SetDeviceID("d-" + f.NodeID); return nil }
func (nopHandler) Frame(*Conn, frame.Frame)           {}
func (nopHandler) Logout(*Conn, error)                {}

// idleCost is the server-side cost of one idle, logged-in connection.
type idleCost struct {
	heapAlloc, heapInuse, stack, rss float64
}

// measureIdleConns runs a server, has a child process open n idle
// logged-in connections, and returns the server's memory growth per
// connection.
func measureIdleConns(tb testing.TB, n int) idleCost {
	tb.Helper()
	s, err := New(Config{Listen: "127.0.0.1:0", Codec: "jsonl", MaxConns: n + 16,
		HelloTimeout: time.Hour, IdleTimeout: time.Hour}, nopHandler{}, nil, nil, nil)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var run sync.WaitGroup
	run.Go(func() {
		if err := s.Run(ctx); err != nil {
			tb.Error(err)
		}
	})
	defer run.Wait()
	defer cancel()
	<-s.Ready()

	ms0, rss0 := memSnapshot()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), idleChildEnv+"="+s.Addr().String(), idleCountEnv+"="+strconv.Itoa(n))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	defer func() {
		_ = stdin.Close()
		_ = cmd.Wait()
	}()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		tb.Fatalf("child: %q %v; stderr: %s", line, err, stderr.String())
	}
	deadline := time.Now().Add(time.Minute)
	for s.Sessions() != n {
		if time.Now().After(deadline) {
			tb.Fatalf("sessions %d, want %d", s.Sessions(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	ms1, rss1 := memSnapshot()
	per := func(a, b uint64) float64 { return (float64(b) - float64(a)) / float64(n) }
	return idleCost{
		heapAlloc: per(ms0.HeapAlloc, ms1.HeapAlloc),
		heapInuse: per(ms0.HeapInuse, ms1.HeapInuse),
		stack:     per(ms0.StackInuse, ms1.StackInuse),
		rss:       per(rss0, rss1),
	}
}

func memSnapshot() (runtime.MemStats, uint64) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms, rssBytes()
}

// rssBytes reads the resident set size from /proc (0 elsewhere).
func rssBytes() uint64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return 0
	}
	return pages * uint64(os.Getpagesize())
}

// TestIdleConnMemory bounds the heap an idle logged-in connection costs the
// server (go-style §7): no goroutine, no per-connection buffers.
func TestIdleConnMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a child process")
	}
	cost := measureIdleConns(t, 500)
	t.Logf("per idle connection: heap alloc %.0f B, heap in use %.0f B, stack %.0f B, rss %.0f B",
		cost.heapAlloc, cost.heapInuse, cost.stack, cost.rss)
	if cost.heapAlloc > 2048 {
		t.Fatalf("an idle connection holds %.0f heap bytes, budget 2048", cost.heapAlloc)
	}
	if cost.stack > 512 {
		t.Fatalf("an idle connection holds %.0f stack bytes: a goroutine per connection?", cost.stack)
	}
}

// TestConnSize keeps Conn, which every idle connection holds, within the
// 144-byte allocation size class (the next one up is 160 bytes: 16 bytes
// per connection, 16 MB per million).
func TestConnSize(t *testing.T) {
	if n := unsafe.Sizeof(Conn{}); n > 144 {
		t.Fatalf("Conn is %d bytes, budget 144", n)
	}
}

// BenchmarkIdleConns reports the server's memory per idle logged-in
// connection for SUBGATE_IDLE_CONNS connections (default 1000), e.g.
//
//	SUBGATE_IDLE_CONNS=19000 go test -run='^$' -bench=IdleConns -benchtime=1x ./southbound/
func BenchmarkIdleConns(b *testing.B) {
	n := 1000
	if v := os.Getenv(idleConnsEnv); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n <= 0 {
			b.Fatalf("%s=%q: want a positive count", idleConnsEnv, v)
		}
	}
	b.ReportAllocs()
	var cost idleCost
	for b.Loop() {
		cost = measureIdleConns(b, n)
	}
	b.ReportMetric(float64(n), "conns")
	b.ReportMetric(cost.heapAlloc, "heap-B/conn")
	b.ReportMetric(cost.heapInuse, "heapinuse-B/conn")
	b.ReportMetric(cost.rss, "rss-B/conn")
}
