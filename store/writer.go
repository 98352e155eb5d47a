package store

import (
	"context"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
)

// opKind says what a write request does.
type opKind uint8

const (
	opAppend opKind = iota + 1
	opAck
	opWrite
)

// kvWrite puts val under key in bucket, or deletes key when val is nil.
type kvWrite struct {
	bucket []byte
	key    []byte
	val    []byte
}

// request is one unit of work for the writer. The caller fills the input
// fields before submitting and reads the output fields only after done is
// closed; the writer owns the request in between.
type request struct {
	op opKind
	// ctx is the caller's context for synchronous requests; a request whose
	// caller already gave up is skipped.
	ctx context.Context

	// opAppend: encoded records and the sum of their payload sizes.
	recs  [][]byte
	bytes int64
	// opAck: sequences to delete.
	acks []uint64
	// opWrite: plain puts and deletes.
	writes []kvWrite

	// Output.
	seqs []uint64
	err  error

	// Completion: done is closed for synchronous requests, cb is called for
	// AppendAsync; acks have neither.
	done chan struct{}
	cb   func(seq uint64, err error)
}

// finish hands r back to its caller.
func (r *request) finish() {
	switch {
	case r.done != nil:
		close(r.done)
	case r.cb != nil:
		var seq uint64
		if r.err == nil && len(r.seqs) == 1 {
			seq = r.seqs[0]
		}
		r.cb(seq, r.err)
	}
}

// run is the writer goroutine: it takes a request, gathers more, commits
// them in one transaction and answers them, until the queue is closed and
// drained.
func (s *Store) run() {
	defer close(s.writerDone)
	batch := make([]*request, 0, s.o.CommitMaxOps)
	var timer *time.Timer
	if s.o.CommitInterval > 0 {
		timer = time.NewTimer(s.o.CommitInterval)
		timer.Stop()
	}
	for {
		r, ok := <-s.queue
		if !ok {
			return
		}
		batch = append(batch[:0], r)
		batch = s.gather(batch, timer)
		s.commit(batch)
		clear(batch)
	}
}

// gather adds queued requests to batch until it holds CommitMaxOps, the
// commit interval since the first one has passed, or the queue is closed.
func (s *Store) gather(batch []*request, timer *time.Timer) []*request {
	limit := s.o.CommitMaxOps
	for len(batch) < limit {
		select {
		case r, ok := <-s.queue:
			if !ok {
				return batch
			}
			batch = append(batch, r)
			continue
		default:
		}
		break
	}
	if len(batch) >= limit || timer == nil {
		return batch
	}
	timer.Reset(s.o.CommitInterval)
	defer timer.Stop()
	for len(batch) < limit {
		select {
		case r, ok := <-s.queue:
			if !ok {
				return batch
			}
			batch = append(batch, r)
		case <-timer.C:
			return batch
		}
	}
	return batch
}

// txState is the outbox as seen inside one write transaction. It starts from
// the committed statistics and is published only if the commit succeeds.
type txState struct {
	stats    OutboxStats
	appended uint64
	acked    uint64
	dropped  uint64
	rejected uint64
	touched  bool
	keys     []byte
}

// commit applies batch in one transaction. A request that fails inside the
// transaction (a bbolt error on its keys) is answered with its error and the
// rest are retried without it, so one bad request cannot fail its
// neighbours. A failed commit fails every request in it.
func (s *Store) commit(batch []*request) {
	pending := s.pending[:0]
	for _, r := range batch {
		if r.ctx != nil && r.ctx.Err() != nil {
			r.err = r.ctx.Err()
			r.finish()
			continue
		}
		pending = append(pending, r)
	}
	defer func() {
		clear(pending)
		s.pending = pending[:0]
	}()
	for len(pending) > 0 {
		start := time.Now()
		var st txState
		failed := -1
		var failErr error
		err := s.db.Update(func(tx *bbolt.Tx) error {
			st = txState{stats: s.wstats, keys: st.keys[:0]}
			ob := tx.Bucket(bucketOutbox)
			// Sequence keys only grow: pack pages full.
			ob.FillPercent = 1.0
			for i, r := range pending {
				r.err, r.seqs = nil, r.seqs[:0]
				if err := s.apply(tx, ob, &st, r); err != nil {
					failed, failErr = i, err
					return err
				}
			}
			if st.touched {
				st.stats.Oldest = time.Time{}
				if k, v := ob.Cursor().First(); k != nil {
					h, err := parseItemHeader(v)
					if err != nil {
						return fmt.Errorf("outbox head: %w", err)
					}
					st.stats.Oldest = time.Unix(0, h.enqueued)
				}
			}
			return nil
		})
		if failed >= 0 {
			r := pending[failed]
			r.err = fmt.Errorf("store: write: %w", failErr)
			s.failed(r)
			pending = append(pending[:failed], pending[failed+1:]...)
			continue
		}
		if err != nil {
			s.m.commitErrors.Inc()
			err = fmt.Errorf("store: commit: %w", err)
			for _, r := range pending {
				r.err = err
				s.failed(r)
			}
			return
		}
		s.txCount.Add(1)
		s.m.commitSeconds.Observe(time.Since(start).Seconds())
		s.m.commitOps.Observe(float64(len(pending)))
		s.committed(&st)
		for _, r := range pending {
			r.finish()
		}
		return
	}
}

// failed answers a request that did not commit; acks have no caller to
// answer, so their failure is logged.
func (s *Store) failed(r *request) {
	if r.op == opAck {
		if ok, n := s.limits.note(limitAckFailed, 1); ok {
			s.log.Error("outbox ack failed", "n", n, "err", r.err)
		}
	}
	r.finish()
}

// committed publishes the state of a committed transaction.
func (s *Store) committed(st *txState) {
	st.stats.Dropped += st.dropped
	s.wstats = st.stats
	if st.touched {
		s.publishStats(st.stats)
	}
	if st.appended > 0 {
		s.m.appended.Add(float64(st.appended))
		select {
		case s.notify <- struct{}{}:
		default:
		}
	}
	if st.acked > 0 {
		s.m.acked.Add(float64(st.acked))
	}
	if st.rejected > 0 {
		s.rejectFull(st.rejected)
	}
	if st.dropped > 0 {
		s.m.dropped.Add(float64(st.dropped))
		if ok, n := s.limits.note(limitDropped, st.dropped); ok {
			s.log.Warn("outbox full, dropped oldest", "n", n)
		}
	}
}

// apply performs r inside tx. Outcomes that concern only r (the outbox is
// full) are left in r.err; a returned error aborts the transaction.
func (s *Store) apply(tx *bbolt.Tx, ob *bbolt.Bucket, st *txState, r *request) error {
	switch r.op {
	case opAppend:
		return s.applyAppend(ob, st, r)
	case opAck:
		for _, seq := range r.acks {
			n := len(st.keys)
			st.keys = seqKey(st.keys, seq)
			k := st.keys[n:]
			v := ob.Get(k)
			if v == nil {
				continue
			}
			size, err := payloadLen(v)
			if err != nil {
				return fmt.Errorf("outbox seq %d: %w", seq, err)
			}
			if err := ob.Delete(k); err != nil {
				return fmt.Errorf("outbox delete seq %d: %w", seq, err)
			}
			st.stats.Messages--
			st.stats.Bytes -= int64(size)
			st.acked++
			st.touched = true
		}
		return nil
	case opWrite:
		for _, w := range r.writes {
			b := tx.Bucket(w.bucket)
			var err error
			if w.val == nil {
				err = b.Delete(w.key)
			} else {
				err = b.Put(w.key, w.val)
			}
			if err != nil {
				return fmt.Errorf("%s %q: %w", w.bucket, w.key, err)
			}
		}
		return nil
	}
	return fmt.Errorf("unknown request op %d", r.op)
}

// applyAppend enforces the outbox bound under the overflow policy, then
// writes r's records under fresh sequences.
func (s *Store) applyAppend(ob *bbolt.Bucket, st *txState, r *request) error {
	limit := s.o.OutboxMaxBytes
	if st.stats.Bytes+r.bytes > limit && s.o.Overflow == OverflowDropOldest {
		c := ob.Cursor()
		for st.stats.Bytes+r.bytes > limit && st.stats.Messages > 0 {
			k, v := c.First()
			if k == nil {
				break
			}
			size, err := payloadLen(v)
			if err != nil {
				return fmt.Errorf("outbox drop: %w", err)
			}
			if err := c.Delete(); err != nil {
				return fmt.Errorf("outbox drop: %w", err)
			}
			st.stats.Messages--
			st.stats.Bytes -= int64(size)
			st.dropped++
			st.touched = true
		}
	}
	if st.stats.Bytes+r.bytes > limit {
		r.err = ErrOutboxFull
		st.rejected++
		return nil
	}
	for _, rec := range r.recs {
		seq, err := ob.NextSequence()
		if err != nil {
			return fmt.Errorf("outbox sequence: %w", err)
		}
		n := len(st.keys)
		st.keys = seqKey(st.keys, seq)
		if err := ob.Put(st.keys[n:len(st.keys):len(st.keys)], rec); err != nil {
			return fmt.Errorf("outbox put seq %d: %w", seq, err)
		}
		r.seqs = append(r.seqs, seq)
		hdr, _ := parseItemHeader(rec)
		st.stats.Messages++
		st.stats.Bytes += int64(len(rec) - hdr.payOff)
		st.appended++
		st.touched = true
	}
	return nil
}
