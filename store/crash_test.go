package store

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
)

// crashDirEnv makes TestCrashChild run as the writer process of
// TestCrashRecovery, with its database in the named directory.
const crashDirEnv = "SUBGATE_STORE_CRASH_DIR"

const (
	crashWorkers = 4
	// crashAcks is how many acknowledged appends the parent reads before
	// it kills the child.
	crashAcks = 400
	// crashMaxPerWorker bounds the child should the parent never kill it.
	crashMaxPerWorker = 200_000
)

func crashPayload(w, i int) string { return fmt.Sprintf(`{"w":%d,"i":%d}`, w, i) }

// TestCrashChild is the child half of TestCrashRecovery: it appends from
// several goroutines with fsync on, and prints "ACK seq worker index" as soon
// as each Append returns, until it is killed.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		t.Skip("helper process of TestCrashRecovery")
	}
	s, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatalf("child Open: %v", err)
	}
	defer s.Close()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range crashWorkers {
		wg.Go(func() {
			for i := range crashMaxPerWorker {
				seqs, err := s.Append(t.Context(), Item{Kind: KindProperties, DeviceID: "crash-dev", Payload: []byte(crashPayload(w, i))})
				if errors.Is(err, ErrBusy) {
					continue
				}
				if err != nil {
					t.Errorf("child Append: %v", err)
					return
				}
				line := fmt.Sprintf("ACK %d %d %d\n", seqs[0], w, i)
				mu.Lock()
				// One write per line: a pipe write below PIPE_BUF is atomic.
				_, err = os.Stdout.WriteString(line)
				mu.Unlock()
				if err != nil {
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestCrashRecovery runs TestCrashChild in a child process, SIGKILLs it
// mid-stream, reopens the database and checks that every append the child
// saw acknowledged is there with its payload (go-style §9).
func TestCrashRecovery(t *testing.T) {
	if os.Getenv(crashDirEnv) != "" {
		t.Skip("running as the child")
	}
	dir := t.TempDir()
	ctx := testCtx(t)
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashDirEnv+"="+dir)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	type ack struct{ w, i int }
	acked := make(map[uint64]ack)
	r := bufio.NewReader(out)
	killed := false
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			// EOF: the child is gone. A fragment without its newline
			// was cut by the kill and proves nothing.
			if !errors.Is(err, io.EOF) {
				t.Fatalf("read child output: %v", err)
			}
			break
		}
		var seq uint64
		var a ack
		if _, err := fmt.Sscanf(line, "ACK %d %d %d\n", &seq, &a.w, &a.i); err != nil {
			continue // test framework output
		}
		if prev, dup := acked[seq]; dup {
			t.Fatalf("seq %d acknowledged twice (%v and %v)", seq, prev, a)
		}
		acked[seq] = a
		if !killed && len(acked) >= crashAcks {
			if err := cmd.Process.Kill(); err != nil {
				t.Fatalf("kill child: %v", err)
			}
			killed = true
		}
	}
	werr := cmd.Wait()
	if !killed {
		t.Fatalf("child ended after %d acks before it was killed: %v\n%s", len(acked), werr, stderr.String())
	}
	t.Logf("child killed after %d acknowledged appends", len(acked))

	s := openTest(t, Options{Dir: dir})
	st := s.OutboxStats()
	if st.Messages < len(acked) {
		t.Fatalf("outbox holds %d items, %d were acknowledged", st.Messages, len(acked))
	}
	found := make(map[uint64]Item, st.Messages)
	for after := uint64(0); ; {
		items, err := s.Peek(after, 1000, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(items) == 0 {
			break
		}
		for _, it := range items {
			found[it.Seq] = it
		}
		after = items[len(items)-1].Seq
	}
	if len(found) != st.Messages {
		t.Fatalf("Peek found %d items, stats say %d", len(found), st.Messages)
	}
	for seq, a := range acked {
		it, ok := found[seq]
		if !ok {
			t.Errorf("acknowledged seq %d (worker %d item %d) lost", seq, a.w, a.i)
			continue
		}
		if want := crashPayload(a.w, a.i); string(it.Payload) != want {
			t.Errorf("seq %d payload %q, want %q", seq, it.Payload, want)
		}
	}
}
