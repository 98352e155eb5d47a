package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
)

// OutboxStats describes the outbox. Messages, Bytes and Oldest reflect the
// last commit exactly and are recomputed on Open; Dropped counts drops since
// Open.
type OutboxStats struct {
	// Messages is the number of items in the outbox.
	Messages int
	// Bytes is the sum of their payload sizes.
	Bytes int64
	// Oldest is the Enqueued time of the lowest sequence; zero when empty.
	Oldest time.Time
	// Dropped counts items deleted unsent by the drop-oldest policy.
	Dropped uint64
}

// Append adds items to the outbox and returns their sequences, in order,
// once the transaction holding them has committed: only then may the device
// be told its data is accepted. Concurrent callers share transactions. The
// items are all written or none. Errors: ErrInvalid or ErrTooLarge for a bad
// item, ErrOutboxFull (reject policy, or the items alone exceed the outbox),
// ErrBusy (write queue full), ErrClosed, or ctx's error, after which the
// items may still be committed (the device resends; delivery is at least
// once). Item.Seq is ignored; a zero Item.Enqueued is set to now.
func (s *Store) Append(ctx context.Context, items ...Item) ([]uint64, error) {
	if len(items) == 0 {
		return nil, nil
	}
	r, err := s.appendRequest(items)
	if err != nil {
		return nil, err
	}
	if err := s.do(ctx, r); err != nil {
		return nil, err
	}
	return r.seqs, nil
}

// AppendAsync adds one item without blocking. It returns ErrBusy at once
// when the write queue is full (and ErrClosed, ErrInvalid, ErrTooLarge,
// ErrOutboxFull as Append). When it returns nil, done is called exactly once
// on the writer goroutine after the commit, with the item's sequence or the
// error that kept it out (ErrOutboxFull under the reject policy, or a commit
// failure). done must not block: it may call Ack or AppendAsync, which never
// wait, but not Close, Append, Flush or the other methods that wait for a
// commit, since the writer would wait for itself.
func (s *Store) AppendAsync(it Item, done func(seq uint64, err error)) error {
	if done == nil {
		return fmt.Errorf("%w: nil done callback", ErrInvalid)
	}
	r, err := s.appendRequest([]Item{it})
	if err != nil {
		return err
	}
	r.cb = done
	return s.submit(r)
}

// appendRequest validates and encodes items outside any transaction. The
// caller's items are not modified.
func (s *Store) appendRequest(items []Item) (*request, error) {
	var now time.Time
	total := int64(0)
	size := 0
	for i := range items {
		size += encodedItemLen(&items[i])
	}
	// One backing array for all records of the request: bbolt keeps the
	// value slices until the commit, and none of them is reused.
	buf := make([]byte, 0, size)
	ends := make([]int, len(items))
	for i := range items {
		it := items[i]
		if it.Enqueued.IsZero() {
			if now.IsZero() {
				now = s.now()
			}
			it.Enqueued = now
		}
		if err := checkItem(&it, s.o.MaxPayloadBytes); err != nil {
			if errors.Is(err, ErrTooLarge) {
				s.m.rejectedTooLarge.Inc()
				if ok, n := s.limits.note(limitTooLarge, 1); ok {
					s.log.Warn("outbox item too large, refusing", "device_id", it.DeviceID, "n", n)
				}
			}
			return nil, err
		}
		buf = appendItem(buf, &it)
		ends[i] = len(buf)
		total += int64(len(it.Payload))
	}
	if total > s.o.OutboxMaxBytes || (s.o.Overflow == OverflowReject && s.OutboxStats().Bytes+total > s.o.OutboxMaxBytes) {
		s.rejectFull(1)
		return nil, ErrOutboxFull
	}
	recs := make([][]byte, len(items))
	start := 0
	for i, end := range ends {
		recs[i] = buf[start:end:end]
		start = end
	}
	return &request{op: opAppend, recs: recs, bytes: total}, nil
}

func (s *Store) rejectFull(n uint64) {
	s.m.rejectedFull.Add(float64(n))
	if ok, c := s.limits.note(limitOutboxFull, n); ok {
		s.log.Warn("outbox full, refusing", "n", c)
	}
}

// Ack removes the items with seqs from the outbox after the platform
// acknowledged them. It does not wait: the removal is queued and grouped
// with other writes. Unknown sequences (already acked or dropped) are
// ignored. It returns ErrBusy when the write queue is full (ack again
// later) and ErrClosed after Close.
func (s *Store) Ack(seqs ...uint64) error {
	if len(seqs) == 0 {
		return nil
	}
	return s.submit(&request{op: opAck, acks: append([]uint64(nil), seqs...)})
}

// Peek returns up to max items with sequence above after, in sequence
// order, stopping early once their payloads reach maxBytes (maxBytes <= 0
// means no byte bound). The first item is returned even when it alone
// exceeds maxBytes, so that the caller always progresses. The items are
// copies and stay valid.
func (s *Store) Peek(after uint64, max int, maxBytes int) ([]Item, error) {
	return s.PeekSkipping(after, max, maxBytes, nil)
}

// PeekSkipping is Peek that passes over the items for which skip (if not
// nil) returns true, without decoding them or counting them towards max
// and maxBytes: a publisher skips the items it has in flight.
func (s *Store) PeekSkipping(after uint64, max int, maxBytes int, skip func(seq uint64) bool) ([]Item, error) {
	if max <= 0 {
		return nil, fmt.Errorf("%w: peek max %d", ErrInvalid, max)
	}
	if after == ^uint64(0) {
		return nil, nil
	}
	var items []Item
	err := s.view(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketOutbox).Cursor()
		var kb [8]byte
		size := 0
		for k, v := c.Seek(seqKey(kb[:0], after+1)); k != nil && len(items) < max; k, v = c.Next() {
			seq, ok := keySeq(k)
			if !ok {
				return fmt.Errorf("%w: outbox key of %d bytes", ErrCorrupt, len(k))
			}
			if skip != nil && skip(seq) {
				continue
			}
			h, err := parseItemHeader(v)
			if err != nil {
				return fmt.Errorf("outbox seq %d: %w", seq, err)
			}
			n := len(v) - h.payOff
			if maxBytes > 0 && len(items) > 0 && size+n > maxBytes {
				break
			}
			it, err := decodeItem(seq, v)
			if err != nil {
				return fmt.Errorf("outbox seq %d: %w", seq, err)
			}
			if items == nil {
				items = make([]Item, 0, min(max, 256))
			}
			items = append(items, it)
			size += n
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return items, nil
}

// OutboxStats returns the outbox statistics as of the last commit.
func (s *Store) OutboxStats() OutboxStats {
	s.statsMu.Lock()
	defer s.statsMu.Unlock()
	return s.stats
}

// Notify returns a channel of capacity 1 that is signalled after each commit
// that added items to the outbox. A signal may stand for several commits;
// the reader Peeks until it finds nothing new.
func (s *Store) Notify() <-chan struct{} { return s.notify }

func (s *Store) publishStats(st OutboxStats) {
	s.statsMu.Lock()
	s.stats = st
	s.statsMu.Unlock()
	if s.m != nil {
		s.m.messages.Set(float64(st.Messages))
		s.m.bytes.Set(float64(st.Bytes))
	}
}

// oldestAge feeds subgate_outbox_oldest_age_seconds at scrape time.
func (s *Store) oldestAge() float64 {
	st := s.OutboxStats()
	if st.Messages == 0 || st.Oldest.IsZero() {
		return 0
	}
	return max(0, s.now().Sub(st.Oldest).Seconds())
}
