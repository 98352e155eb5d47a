package store

import (
	"context"
	"testing"
	"time"
)

// BenchmarkAppend measures concurrent durable appends (fsync on), as many
// gnet workers would make them. It reports items/s; it asserts nothing.
func BenchmarkAppend(b *testing.B) {
	s, err := Open(Options{Dir: b.TempDir(), QueueSize: 1 << 16})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	payload := []byte(`{"services":[{"service_id":"meter","properties":{"v":230.1,"i":1.25}}]}`)
	b.SetBytes(int64(len(payload)))
	b.SetParallelism(32)
	b.ReportAllocs()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.Append(ctx, Item{Kind: KindProperties, DeviceID: "bench-dev", Payload: payload}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	el := time.Since(start)
	b.ReportMetric(float64(b.N)/el.Seconds(), "items/s")
	if tx := s.txCount.Load(); tx > 0 {
		b.ReportMetric(float64(b.N)/float64(tx), "items/tx")
	}
}

// BenchmarkPeekAck measures the northbound's side: Peek a window of 100,
// then Ack it. Refills happen outside the timer.
func BenchmarkPeekAck(b *testing.B) {
	const window, refill = 100, 10_000
	s, err := Open(Options{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	payload := []byte(`{"services":[{"service_id":"meter","properties":{"v":230.1}}]}`)
	fill := func() {
		items := make([]Item, refill)
		for i := range items {
			items[i] = Item{Kind: KindProperties, DeviceID: "bench-dev", Payload: payload}
		}
		if _, err := s.Append(ctx, items...); err != nil {
			b.Fatal(err)
		}
	}
	fill()
	var after uint64
	seqs := make([]uint64, 0, window)
	acked := 0
	b.ReportAllocs()
	start := time.Now()
	for b.Loop() {
		items, err := s.Peek(after, window, 0)
		if err != nil {
			b.Fatal(err)
		}
		if len(items) < window {
			b.StopTimer()
			if err := s.Flush(ctx); err != nil {
				b.Fatal(err)
			}
			fill()
			b.StartTimer()
			continue
		}
		seqs = seqs[:0]
		for _, it := range items {
			seqs = append(seqs, it.Seq)
		}
		after = seqs[len(seqs)-1]
		for {
			err := s.Ack(seqs...)
			if err == nil {
				break
			}
			if err != ErrBusy {
				b.Fatal(err)
			}
			if err := s.Flush(ctx); err != nil && err != ErrBusy {
				b.Fatal(err)
			}
		}
		acked += len(seqs)
	}
	if err := s.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(acked)/time.Since(start).Seconds(), "items/s")
}
