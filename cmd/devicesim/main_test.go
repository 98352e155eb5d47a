package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestMainJSON(t *testing.T) {
	g := newFakeGateway(t, "jsonl")
	g.start()
	var stdout, stderr bytes.Buffer
	code := run(t.Context(), []string{"-addr", g.addr(), "-n", "3", "-hold", "0", "-report", "0", "-json", "-strict", "-prefix", "m"}, &stdout, &stderr)
	if code != exitOK {
		t.Fatalf("exit %d, stderr %s", code, stderr.String())
	}
	var sum Summary
	if err := json.Unmarshal(stdout.Bytes(), &sum); err != nil {
		t.Fatalf("stdout %q: %v", stdout.String(), err)
	}
	if sum.Phase != phaseDone || sum.Devices != 3 || sum.Connected != 3 || sum.Errors != 0 {
		t.Errorf("summary %+v", sum)
	}
	if !strings.Contains(stderr.String(), "devicesim: starting n=3") {
		t.Errorf("stderr %q", stderr.String())
	}
}

func TestMainStrictFailure(t *testing.T) {
	g := newFakeGateway(t, "binary")
	g.refuse = func(node string) bool { return node == "dev11" }
	g.start()
	var stdout, stderr bytes.Buffer
	args := []string{"-addr", g.addr(), "-codec", "binary", "-n", "3", "-offset", "10", "-hold", "0", "-report", "0", "-strict"}
	if code := run(t.Context(), args, &stdout, &stderr); code != exitFailed {
		t.Fatalf("exit %d, want %d; stderr %s", code, exitFailed, stderr.String())
	}
	line := stdout.String()
	if !strings.HasPrefix(line, "devicesim: connected=2/3 failed=1 ") || !strings.Contains(line, " err_refused_auth_failed=1") {
		t.Errorf("summary %q", line)
	}
	// Without -strict the same run succeeds.
	stdout.Reset()
	if code := run(t.Context(), args[:len(args)-1], &stdout, &stderr); code != exitOK {
		t.Fatalf("exit %d without -strict", code)
	}
}

// watcher is an io.Writer that keeps what is written and signals when a
// line containing want has been written.
type watcher struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	want string
	seen chan struct{}
	once sync.Once
}

func (w *watcher) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if strings.Contains(w.buf.String(), w.want) {
		w.once.Do(func() { close(w.seen) })
	}
	return len(p), nil
}

func (w *watcher) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func TestMainProgressAndInterrupt(t *testing.T) {
	g := newFakeGateway(t, "jsonl")
	g.start()
	stderr := &watcher{want: "devicesim: progress phase=holding connected=2/2 failed=0 online=2 ", seen: make(chan struct{})}
	var stdout bytes.Buffer
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		// Interrupt the hold once a progress line shows it, as SIGINT does.
		select {
		case <-stderr.seen:
		case <-time.After(testTimeout):
			t.Error("no progress line while holding")
		}
		cancel()
	})
	code := run(ctx, []string{"-addr", g.addr(), "-n", "2", "-report", "1ms", "-hold", "1h"}, &stdout, stderr)
	wg.Wait()
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if !strings.HasPrefix(stdout.String(), "devicesim: connected=2/2 failed=0 online=0 ") || !strings.Contains(stdout.String(), " errors=0 ") {
		t.Errorf("summary %q", stdout.String())
	}
}

func TestMainUsage(t *testing.T) {
	for _, args := range [][]string{
		{"-n", "0"},
		{"-codec", "xml"},
		{"-codec", "demo", "-ack"},
		{"-codec", "demo", "-answer"},
		{"-secret-derive"},
		{"-secret-hex", "zz"},
		{"-secret-hex", "00", "-secret-file", "x"},
		{"-src", "127.0.0.9-127.0.0.1"},
		{"-prefix", "bad id"},
		{"-product", "bad/product"},
		{"-msg-rate", "-1"},
		{"-msg-rate", "NaN"},
		{"-payload", "1000000"},
		{"-window", "0"},
		{"-duration", "0"},
		{"-print-secrets"},
		{"extra"},
		{"-no-such-flag"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(t.Context(), args, &stdout, &stderr); code != exitUsage {
			t.Errorf("%v: exit %d, want %d", args, code, exitUsage)
		}
		if stdout.Len() != 0 {
			t.Errorf("%v: stdout %q", args, stdout.String())
		}
	}
	var stdout, stderr bytes.Buffer
	if code := run(t.Context(), []string{"-h"}, &stdout, &stderr); code != exitOK || !strings.Contains(stderr.String(), "-connect-rate") {
		t.Errorf("-h: exit %d, %q", code, stderr.String())
	}
}

func TestMainPrintSecrets(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run(t.Context(), []string{"-n", "2", "-offset", "1", "-secret-hex", "6d61737465722d6b6579", "-secret-derive", "-print-secrets"}, &stdout, &stderr)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	// 6d61737465722d6b6579 is "master-key"; see TestSecrets.
	if len(lines) != 2 || lines[0] != "dev1 ea00bb384fa20426d7c0e7bf95f47a2f436be671279f31d2e9a10ae90b447b32" || !strings.HasPrefix(lines[1], "dev2 ") {
		t.Errorf("secrets %q", lines)
	}
}

func TestMainMaxFDs(t *testing.T) {
	g := newFakeGateway(t, "jsonl")
	g.start()
	var stdout, stderr bytes.Buffer
	code := run(t.Context(), []string{"-addr", g.addr(), "-n", "10", "-max-fds", "66", "-hold", "0", "-report", "0"}, &stdout, &stderr)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), "-n 10 lowered to 2") || !strings.HasPrefix(stdout.String(), "devicesim: connected=2/2 ") {
		t.Errorf("stderr %q stdout %q", stderr.String(), stdout.String())
	}
	if code := run(t.Context(), []string{"-addr", g.addr(), "-n", "10", "-max-fds", "10"}, &stdout, &stderr); code != exitFailed {
		t.Errorf("no room for devices: exit %d", code)
	}
}
