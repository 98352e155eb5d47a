package store

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/bbolt"
)

// histogramCounts returns the sample count and sum of the histogram name
// in reg.
func histogramCounts(t *testing.T, reg *prometheus.Registry, name string) (uint64, float64) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			h := mf.GetMetric()[0].GetHistogram()
			return h.GetSampleCount(), h.GetSampleSum()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0, 0
}

func TestGroupCommit(t *testing.T) {
	const callers, perTx = 2000, 100
	reg := prometheus.NewRegistry()
	// With an interval far longer than the test, a transaction commits only
	// when CommitMaxOps requests are gathered: the count is exact.
	s := openTest(t, Options{CommitInterval: time.Hour, CommitMaxOps: perTx, QueueSize: callers, Registerer: reg})
	ctx := testCtx(t)
	start := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	seqs := make(chan uint64, callers)
	for i := range callers {
		wg.Go(func() {
			<-start
			got, err := s.Append(ctx, msg("dev", payloadOf(i)))
			if err != nil {
				errs <- err
				return
			}
			seqs <- got[0]
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	close(seqs)
	for err := range errs {
		t.Fatalf("Append: %v", err)
	}
	var all []uint64
	for q := range seqs {
		all = append(all, q)
	}
	slices.Sort(all)
	if len(all) != callers || all[0] != 1 || all[callers-1] != callers || len(slices.Compact(all)) != callers {
		t.Fatalf("sequences not 1..%d without gaps", callers)
	}
	if got := s.txCount.Load(); got != callers/perTx {
		t.Errorf("%d transactions for %d appends, want %d", got, callers, callers/perTx)
	}
	n, sum := histogramCounts(t, reg, "subgate_store_commit_ops")
	if n != callers/perTx || sum != callers {
		t.Errorf("commit_ops histogram count %d sum %v, want %d %d", n, sum, callers/perTx, callers)
	}
	if got := metricValue(t, s.m.appended); got != callers {
		t.Errorf("appended_total %v", got)
	}
}

func TestGroupCommitDefaults(t *testing.T) {
	// With default settings, concurrent callers still share transactions.
	const callers = 2000
	s := openTest(t, Options{QueueSize: callers})
	ctx := testCtx(t)
	start := make(chan struct{})
	var wg sync.WaitGroup
	var failed sync.Once
	for i := range callers {
		wg.Go(func() {
			<-start
			if _, err := s.Append(ctx, msg("dev", payloadOf(i))); err != nil {
				failed.Do(func() { t.Errorf("Append: %v", err) })
			}
		})
	}
	close(start)
	wg.Wait()
	if got := s.txCount.Load(); got*2 > callers {
		t.Errorf("%d transactions for %d concurrent appends", got, callers)
	}
	t.Logf("%d concurrent appends in %d transactions", callers, s.txCount.Load())
}

func TestPeekOrderAndAck(t *testing.T) {
	ctx := testCtx(t)
	clk := newFakeClock()
	dir := t.TempDir()
	s := openTest(t, Options{Dir: dir, NoSync: true, Now: clk.Now})
	for i := range 20 {
		if _, err := s.Append(ctx, msg("dev", payloadOf(i))); err != nil {
			t.Fatal(err)
		}
		clk.Advance(time.Second)
	}
	items, err := s.Peek(0, 100, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 20 {
		t.Fatalf("Peek returned %d items", len(items))
	}
	for i, it := range items {
		if it.Seq != uint64(i+1) || string(it.Payload) != payloadOf(i) || it.DeviceID != "dev" || it.Kind != KindMessage {
			t.Fatalf("item %d = %+v", i, it)
		}
	}
	// max and after.
	items, _ = s.Peek(5, 3, 0)
	if got := seqsOf(items); !slices.Equal(got, []uint64{6, 7, 8}) {
		t.Fatalf("Peek(5,3) = %v", got)
	}
	// maxBytes stops before the item that would exceed it, but the first
	// item always comes.
	n := len(payloadOf(0))
	items, _ = s.Peek(0, 100, 2*n+1)
	if got := seqsOf(items); !slices.Equal(got, []uint64{1, 2}) {
		t.Fatalf("Peek(maxBytes) = %v", got)
	}
	items, _ = s.Peek(0, 100, 1)
	if got := seqsOf(items); !slices.Equal(got, []uint64{1}) {
		t.Fatalf("Peek(tiny maxBytes) = %v", got)
	}
	if items, _ = s.Peek(^uint64(0), 10, 0); len(items) != 0 {
		t.Fatal("Peek(max seq) returned items")
	}
	if _, err := s.Peek(0, 0, 0); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Peek(max 0) = %v", err)
	}
	// Skipped items count towards neither max nor maxBytes.
	inFlight := func(seq uint64) bool { return seq%2 == 0 || seq < 4 }
	items, _ = s.PeekSkipping(0, 3, 0, inFlight)
	if got := seqsOf(items); !slices.Equal(got, []uint64{5, 7, 9}) {
		t.Fatalf("PeekSkipping(max 3) = %v", got)
	}
	items, _ = s.PeekSkipping(5, 100, 2*n+1, inFlight)
	if got := seqsOf(items); !slices.Equal(got, []uint64{7, 9}) {
		t.Fatalf("PeekSkipping(maxBytes) = %v", got)
	}

	if err := s.Ack(1, 3, 2, 10, 999); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	items, _ = s.Peek(0, 5, 0)
	if got := seqsOf(items); !slices.Equal(got, []uint64{4, 5, 6, 7, 8}) {
		t.Fatalf("after Ack Peek = %v", got)
	}
	st := s.OutboxStats()
	first := clk.Now().Add(-20 * time.Second)
	if st.Messages != 16 || !st.Oldest.Equal(first.Add(3*time.Second)) {
		t.Fatalf("stats %+v", st)
	}
	var wantBytes int64
	for i := 3; i < 20; i++ {
		if i != 9 {
			wantBytes += int64(len(payloadOf(i)))
		}
	}
	if st.Bytes != wantBytes {
		t.Fatalf("bytes %d, want %d", st.Bytes, wantBytes)
	}
	if got := metricValue(t, s.m.acked); got != 4 {
		t.Errorf("acked_total %v, want 4", got)
	}
	if got := metricValue(t, s.m.messages); got != 16 {
		t.Errorf("messages gauge %v", got)
	}
	if got := metricValue(t, s.m.oldestAge); got != 17 {
		t.Errorf("oldest age %v, want 17", got)
	}

	// Stats are exact after a reopen (recomputed by scanning).
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := openTest(t, Options{Dir: dir, NoSync: true, Now: clk.Now})
	if got := s2.OutboxStats(); got != (OutboxStats{Messages: st.Messages, Bytes: st.Bytes, Oldest: got.Oldest}) || !got.Oldest.Equal(st.Oldest) {
		t.Fatalf("reopened stats %+v, want %+v", got, st)
	}
	// Emptying the outbox clears Oldest.
	var all []uint64
	for i := uint64(4); i <= 20; i++ {
		all = append(all, i)
	}
	if err := s2.Ack(all...); err != nil {
		t.Fatal(err)
	}
	if err := s2.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := s2.OutboxStats(); got != (OutboxStats{}) {
		t.Fatalf("empty outbox stats %+v", got)
	}
	if got := metricValue(t, s2.m.oldestAge); got != 0 {
		t.Errorf("oldest age of empty outbox %v", got)
	}
}

func seqsOf(items []Item) []uint64 {
	out := make([]uint64, len(items))
	for i, it := range items {
		out[i] = it.Seq
	}
	return out
}

func TestOverflowReject(t *testing.T) {
	ctx := testCtx(t)
	reg := prometheus.NewRegistry()
	s := openTest(t, Options{OutboxMaxBytes: 100, Registerer: reg})
	p40 := strings.Repeat("x", 40)
	for range 2 {
		if _, err := s.Append(ctx, msg("dev", p40)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Append(ctx, msg("dev", p40)); !errors.Is(err, ErrOutboxFull) {
		t.Fatalf("third Append = %v, want ErrOutboxFull", err)
	}
	// Several items are all or nothing.
	if _, err := s.Append(ctx, msg("dev", "a"), msg("dev", p40)); !errors.Is(err, ErrOutboxFull) {
		t.Fatalf("batch Append = %v, want ErrOutboxFull", err)
	}
	if st := s.OutboxStats(); st.Messages != 2 || st.Bytes != 80 || st.Dropped != 0 {
		t.Fatalf("stats %+v", st)
	}
	if err := s.Ack(1); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(ctx, msg("dev", p40)); err != nil {
		t.Fatalf("Append after Ack: %v", err)
	}

	// Two async appends that each pass the caller-side check share one
	// transaction; the writer refuses the one that no longer fits.
	s2 := openTest(t, Options{OutboxMaxBytes: 100, CommitInterval: time.Hour, CommitMaxOps: 2, Registerer: prometheus.NewRegistry()})
	p60 := strings.Repeat("y", 60)
	res := make(chan error, 2)
	for range 2 {
		if err := s2.AppendAsync(msg("dev", p60), func(_ uint64, err error) { res <- err }); err != nil {
			t.Fatal(err)
		}
	}
	got := []error{<-res, <-res}
	if got[0] != nil || !errors.Is(got[1], ErrOutboxFull) {
		t.Fatalf("async results %v, want [nil ErrOutboxFull]", got)
	}
	if v := metricValue(t, s2.m.rejectedFull); v != 1 {
		t.Errorf("s2 rejected{full} = %v", v)
	}

	checkGathered(t, reg, `
subgate_outbox_rejected_total{reason="busy"} 0
subgate_outbox_rejected_total{reason="full"} 2
subgate_outbox_rejected_total{reason="too_large"} 0
subgate_outbox_messages 2
subgate_outbox_bytes 80
subgate_outbox_dropped_total{policy="drop-oldest"} 0
subgate_outbox_appended_total 3
subgate_outbox_acked_total 1
`)
}

func TestOverflowDropOldest(t *testing.T) {
	ctx := testCtx(t)
	reg := prometheus.NewRegistry()
	clk := newFakeClock()
	s := openTest(t, Options{OutboxMaxBytes: 100, Overflow: OverflowDropOldest, Registerer: reg, Now: clk.Now})
	p40 := strings.Repeat("x", 40)
	for range 5 {
		if _, err := s.Append(ctx, msg("dev", p40)); err != nil {
			t.Fatal(err)
		}
		clk.Advance(time.Second)
	}
	items, err := s.Peek(0, 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := seqsOf(items); !slices.Equal(got, []uint64{4, 5}) {
		t.Fatalf("outbox holds %v, want [4 5]", got)
	}
	st := s.OutboxStats()
	if st.Messages != 2 || st.Bytes != 80 || st.Dropped != 3 || !st.Oldest.Equal(items[0].Enqueued) {
		t.Fatalf("stats %+v", st)
	}
	// Acking a dropped item is harmless.
	if err := s.Ack(1, 2); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// A request larger than the whole outbox cannot be made to fit.
	if _, err := s.Append(ctx, msg("dev", p40), msg("dev", p40), msg("dev", p40)); !errors.Is(err, ErrOutboxFull) {
		t.Fatalf("oversized batch = %v, want ErrOutboxFull", err)
	}
	checkGathered(t, reg, `
subgate_outbox_dropped_total{policy="drop-oldest"} 3
subgate_outbox_acked_total 0
subgate_outbox_appended_total 5
subgate_outbox_oldest_age_seconds 2
subgate_outbox_messages 2
subgate_outbox_bytes 80
subgate_outbox_rejected_total{reason="busy"} 0
subgate_outbox_rejected_total{reason="full"} 1
subgate_outbox_rejected_total{reason="too_large"} 0
`)
}

func TestQueueFullIsBusy(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := openTest(t, Options{QueueSize: 1, CommitInterval: -1, Registerer: reg})
	// Park the writer inside a completion callback.
	entered, release := make(chan struct{}), make(chan struct{})
	err := s.AppendAsync(msg("dev", "park"), func(uint64, error) {
		close(entered)
		<-release
	})
	if err != nil {
		t.Fatal(err)
	}
	<-entered
	if err := s.Ack(1); err != nil { // fills the queue of one
		t.Fatal(err)
	}
	if got := metricValue(t, s.m.queueDepth); got != 1 {
		t.Errorf("queue depth %v, want 1", got)
	}
	if err := s.Ack(2); !errors.Is(err, ErrBusy) {
		t.Fatalf("Ack on full queue = %v, want ErrBusy", err)
	}
	if _, err := s.Append(testCtx(t), msg("dev", "x")); !errors.Is(err, ErrBusy) {
		t.Fatalf("Append on full queue = %v, want ErrBusy", err)
	}
	if err := s.AppendAsync(msg("dev", "x"), func(uint64, error) {}); !errors.Is(err, ErrBusy) {
		t.Fatalf("AppendAsync on full queue = %v, want ErrBusy", err)
	}
	if got := metricValue(t, s.m.rejectedBusy); got != 3 {
		t.Errorf("rejected{busy} = %v, want 3", got)
	}
	close(release)
	// The queue drains once the writer is released; until then Flush itself
	// may find it full.
	ctx := testCtx(t)
	for {
		err := s.Flush(ctx)
		if err == nil {
			break
		}
		if !errors.Is(err, ErrBusy) {
			t.Fatal(err)
		}
		select {
		case <-ctx.Done():
			t.Fatal("queue never drained")
		default:
			runtime.Gosched()
		}
	}
	if st := s.OutboxStats(); st.Messages != 0 {
		t.Fatalf("stats %+v after ack", st)
	}
}

func TestAppendValidation(t *testing.T) {
	ctx := testCtx(t)
	reg := prometheus.NewRegistry()
	s := openTest(t, Options{MaxPayloadBytes: 10, Registerer: reg})
	cases := []struct {
		name string
		it   Item
		want error
	}{
		{"zero kind", Item{DeviceID: "d", Payload: []byte("x")}, ErrInvalid},
		{"unknown kind", Item{Kind: 9, DeviceID: "d", Payload: []byte("x")}, ErrInvalid},
		{"no device", Item{Kind: KindEvent, Payload: []byte("x")}, ErrInvalid},
		{"bad device", Item{Kind: KindEvent, DeviceID: "a b", Payload: []byte("x")}, ErrInvalid},
		{"custom without topic", Item{Kind: KindCustom, DeviceID: "d", Payload: []byte("x")}, ErrInvalid},
		{"topic on message", Item{Kind: KindMessage, DeviceID: "d", Topic: "t", Payload: []byte("x")}, ErrInvalid},
		{"long topic", Item{Kind: KindCustom, DeviceID: "d", Topic: strings.Repeat("t", MaxTopicLen+1), Payload: []byte("x")}, ErrInvalid},
		{"empty payload", Item{Kind: KindProperties, DeviceID: "d"}, ErrInvalid},
		{"before 1970", Item{Kind: KindProperties, DeviceID: "d", Payload: []byte("x"), Enqueued: time.Date(1960, 1, 1, 0, 0, 0, 0, time.UTC)}, ErrInvalid},
		{"too large", Item{Kind: KindProperties, DeviceID: "d", Payload: make([]byte, 11)}, ErrTooLarge},
	}
	for _, tc := range cases {
		if _, err := s.Append(ctx, msg("d", "ok"), tc.it); !errors.Is(err, tc.want) {
			t.Errorf("%s: Append = %v, want %v", tc.name, err, tc.want)
		}
		if err := s.AppendAsync(tc.it, func(uint64, error) { t.Errorf("%s: callback ran", tc.name) }); !errors.Is(err, tc.want) {
			t.Errorf("%s: AppendAsync = %v, want %v", tc.name, err, tc.want)
		}
	}
	if err := s.AppendAsync(msg("d", "x"), nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("AppendAsync(nil done) = %v", err)
	}
	if got := metricValue(t, s.m.rejectedTooLarge); got != 2 {
		t.Errorf("rejected{too_large} = %v, want 2", got)
	}
	if st := s.OutboxStats(); st.Messages != 0 {
		t.Fatalf("refused items were written: %+v", st)
	}
	// The caller's items are not modified (Enqueued stays zero).
	in := []Item{msg("d", "ok")}
	if _, err := s.Append(ctx, in...); err != nil {
		t.Fatal(err)
	}
	if !in[0].Enqueued.IsZero() || in[0].Seq != 0 {
		t.Errorf("caller's item modified: %+v", in[0])
	}
	if seqs, err := s.Append(ctx); seqs != nil || err != nil {
		t.Errorf("empty Append = %v %v", seqs, err)
	}
}

func TestNotifyAfterAppend(t *testing.T) {
	s := openTest(t, Options{})
	ctx := testCtx(t)
	select {
	case <-s.Notify():
		t.Fatal("signal before any append")
	default:
	}
	if err := s.PutMeta(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Notify():
		t.Fatal("signal after a write that added no items")
	default:
	}
	for range 3 {
		if _, err := s.Append(ctx, msg("d", "x")); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-s.Notify():
	case <-ctx.Done():
		t.Fatal("no signal after append")
	}
	if cap(s.Notify()) != 1 {
		t.Fatalf("notify capacity %d", cap(s.Notify()))
	}
}

func TestCanceledContext(t *testing.T) {
	s := openTest(t, Options{})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := s.Append(ctx, msg("d", "x")); !errors.Is(err, context.Canceled) {
		t.Fatalf("Append(canceled) = %v", err)
	}
	if err := s.PutMeta(ctx, "k", []byte("v")); !errors.Is(err, context.Canceled) {
		t.Fatalf("PutMeta(canceled) = %v", err)
	}
	if err := s.Flush(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if st := s.OutboxStats(); st.Messages != 0 {
		t.Fatalf("canceled append written: %+v", st)
	}
}

func TestCorruptOutboxQuarantined(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(testCtx(t), msg("d", "good1"), msg("d", "good2")); err != nil {
		t.Fatal(err)
	}
	s.Close()
	rawUpdate(t, dir, func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketOutbox)
		if err := b.Put(u64(1), []byte{itemFormatV1, 99}); err != nil {
			return err
		}
		return b.Put([]byte("short"), []byte("junk"))
	})
	s = openTest(t, Options{Dir: dir, NoSync: true})
	if st := s.OutboxStats(); st.Messages != 1 || st.Bytes != int64(len("good2")) {
		t.Fatalf("stats %+v", st)
	}
	items, err := s.Peek(0, 10, 0)
	if err != nil || len(items) != 1 || items[0].Seq != 2 {
		t.Fatalf("Peek = %+v %v", items, err)
	}
	err = s.db.View(func(tx *bbolt.Tx) error {
		q := tx.Bucket(bucketQuarantine)
		if q == nil || q.Stats().KeyN != 2 {
			t.Errorf("quarantine bucket missing or wrong size")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestMetricsRegistration(t *testing.T) {
	reg := prometheus.NewRegistry()
	dir := t.TempDir()
	s := openTest(t, Options{Dir: dir, NoSync: true, Registerer: reg})
	// A second store on the same registry is refused (and does not leak
	// the lock or half its collectors).
	if _, err := Open(Options{Dir: t.TempDir(), NoSync: true, Registerer: reg}); err == nil {
		t.Fatal("second store on one registry accepted")
	}
	names := []string{
		"subgate_outbox_messages", "subgate_outbox_bytes", "subgate_outbox_oldest_age_seconds",
		"subgate_outbox_appended_total", "subgate_outbox_acked_total", "subgate_outbox_dropped_total",
		"subgate_outbox_rejected_total", "subgate_store_commit_seconds", "subgate_store_commit_ops",
		"subgate_store_queue_depth", "subgate_store_commit_errors_total",
	}
	if _, err := s.Append(testCtx(t), msg("d", "x")); err != nil {
		t.Fatal(err)
	}
	if n := familyCount(t, reg, names...); n != len(names) {
		t.Fatalf("%d of %d metric families exposed", n, len(names))
	}
	// Close unregisters, so a reopened store can register again.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(Options{Dir: dir, NoSync: true, Registerer: reg})
	if err != nil {
		t.Fatalf("reopen on same registry: %v", err)
	}
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
}
