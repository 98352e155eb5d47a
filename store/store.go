package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/subgate/subgate/subdevice"
)

// Store is subgate's durable store. Create it with Open; all methods are
// safe for concurrent use.
type Store struct {
	o      Options
	db     *bbolt.DB
	log    *slog.Logger
	now    func() time.Time
	m      *metrics
	limits logLimiter

	// mu guards closing against the close of queue: senders hold it for
	// reading while they try a non-blocking send; Close holds it for
	// writing to set closing and close the channel.
	mu      sync.RWMutex
	closing bool
	queue   chan *request

	closed     atomic.Bool
	writerDone chan struct{}
	notify     chan struct{}
	closeOnce  sync.Once
	closeErr   error

	// statsMu guards stats, the committed outbox statistics published by
	// the writer after each commit.
	statsMu sync.Mutex
	stats   OutboxStats

	// Writer-owned state: only the writer goroutine touches it.
	wstats  OutboxStats
	pending []*request

	// txCount counts committed write transactions.
	txCount atomic.Uint64
}

// Open opens (creating if needed) the database in o.Dir, checks or writes
// the schema version, recomputes the outbox statistics by scanning the
// outbox, registers the metrics and starts the writer. A second Open of the
// same directory fails with ErrLocked after o.LockTimeout.
func Open(o Options) (*Store, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	o = o.withDefaults()
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("store: create dir: %w", err)
	}
	path := filepath.Join(o.Dir, FileName)
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{
		Timeout:      o.LockTimeout,
		NoSync:       o.NoSync,
		FreelistType: bbolt.FreelistMapType,
	})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("%w: %s (waited %s)", ErrLocked, path, o.LockTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	s := &Store{
		o:          o,
		db:         db,
		log:        o.Logger.With("component", "store"),
		now:        o.Now,
		limits:     logLimiter{now: o.Now},
		queue:      make(chan *request, o.QueueSize),
		writerDone: make(chan struct{}),
		notify:     make(chan struct{}, 1),
		pending:    make([]*request, 0, o.CommitMaxOps),
	}
	if err := s.load(); err != nil {
		_ = db.Close()
		return nil, err
	}
	s.m = newMetrics(s)
	if err := s.m.register(o.Registerer); err != nil {
		_ = db.Close()
		return nil, err
	}
	s.publishStats(s.wstats)
	s.log.Info("store opened", "n", s.wstats.Messages)
	go s.run()
	return s, nil
}

// load checks the schema, quarantines undecodable outbox records and
// computes the outbox statistics.
func (s *Store) load() error {
	if err := s.db.Update(initSchema); err != nil {
		if errors.Is(err, ErrSchema) {
			return err
		}
		return fmt.Errorf("store: init schema: %w", err)
	}
	var st OutboxStats
	var bad [][]byte
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketOutbox).ForEach(func(k, v []byte) error {
			h, err := parseItemHeader(v)
			if _, ok := keySeq(k); !ok || err != nil {
				bad = append(bad, bytes.Clone(k))
				return nil
			}
			if st.Messages == 0 {
				st.Oldest = time.Unix(0, h.enqueued)
			}
			st.Messages++
			st.Bytes += int64(len(v) - h.payOff)
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("store: scan outbox: %w", err)
	}
	if len(bad) > 0 {
		err := s.db.Update(func(tx *bbolt.Tx) error {
			q, err := tx.CreateBucketIfNotExists(bucketQuarantine)
			if err != nil {
				return err
			}
			ob := tx.Bucket(bucketOutbox)
			for _, k := range bad {
				if err := q.Put(k, bytes.Clone(ob.Get(k))); err != nil {
					return err
				}
				if err := ob.Delete(k); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("store: quarantine corrupt outbox records: %w", err)
		}
		s.log.Error("corrupt outbox records quarantined", "n", len(bad), "err", ErrCorrupt)
	}
	s.wstats = st
	return nil
}

// Close stops accepting requests, commits everything already queued, stops
// the writer and closes the database. It is idempotent: later calls return
// the first call's result. Requests made after Close began fail with
// ErrClosed.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.mu.Lock()
		s.closing = true
		close(s.queue)
		s.mu.Unlock()
		<-s.writerDone
		s.m.unregister(s.o.Registerer)
		if err := s.db.Close(); err != nil {
			s.closeErr = fmt.Errorf("store: close: %w", err)
		}
		s.log.Info("store closed")
	})
	return s.closeErr
}

// Closed reports whether Close has begun.
func (s *Store) Closed() bool { return s.closed.Load() }

// submit queues r without blocking: ErrClosed once Close began, ErrBusy when
// the queue is full.
func (s *Store) submit(r *request) error {
	s.mu.RLock()
	if s.closing {
		s.mu.RUnlock()
		return ErrClosed
	}
	select {
	case s.queue <- r:
		s.mu.RUnlock()
		return nil
	default:
		s.mu.RUnlock()
		s.m.rejectedBusy.Inc()
		if ok, n := s.limits.note(limitQueueFull, 1); ok {
			s.log.Warn("write queue full, refusing", "n", n)
		}
		return ErrBusy
	}
}

// do submits a synchronous request and waits until the writer finished it
// or ctx is done. When ctx ends first the request may still commit.
func (s *Store) do(ctx context.Context, r *request) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r.ctx = ctx
	r.done = make(chan struct{})
	if err := s.submit(r); err != nil {
		return err
	}
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// view runs fn in a read transaction, mapping a closed database to
// ErrClosed.
func (s *Store) view(fn func(tx *bbolt.Tx) error) error {
	if s.closed.Load() {
		return ErrClosed
	}
	err := s.db.View(fn)
	if errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return err
}

// LoadDevices returns the sub-device list version and every stored
// sub-device record, in device id order. A record that cannot be decoded
// fails the whole load with ErrCorrupt naming its key.
func (s *Store) LoadDevices() (version int64, devs []subdevice.Device, err error) {
	err = s.view(func(tx *bbolt.Tx) error {
		if raw := tx.Bucket(bucketMeta).Get(keyListVersion); raw != nil {
			if len(raw) != 8 {
				return fmt.Errorf("%w: list version is %d bytes", ErrCorrupt, len(raw))
			}
			version = int64(binary.BigEndian.Uint64(raw))
		}
		return tx.Bucket(bucketDevices).ForEach(func(k, v []byte) error {
			d, err := decodeDevice(k, v)
			if err != nil {
				return err
			}
			devs = append(devs, d)
			return nil
		})
	})
	if err != nil {
		return 0, nil, err
	}
	return version, devs, nil
}

// PutDevices inserts or replaces the records of devs in one transaction and
// returns after the commit.
func (s *Store) PutDevices(ctx context.Context, devs []subdevice.Device) error {
	return s.ApplyNotify(ctx, -1, devs, nil)
}

// DeleteDevices removes the records of deviceIDs (absent ones are ignored)
// in one transaction and returns after the commit.
func (s *Store) DeleteDevices(ctx context.Context, deviceIDs []string) error {
	return s.ApplyNotify(ctx, -1, nil, deviceIDs)
}

// SetVersion stores the sub-device list version (iotda-protocol §3.10) and
// returns after the commit. v must not be negative.
func (s *Store) SetVersion(ctx context.Context, v int64) error {
	if v < 0 {
		return fmt.Errorf("%w: negative list version %d", ErrInvalid, v)
	}
	return s.ApplyNotify(ctx, v, nil, nil)
}

// ApplyNotify applies an add or delete notification atomically: the records
// in put are written, those in del removed, and the list version set to
// version, all in one transaction (iotda-protocol §3.4, §3.5, §3.10).
// Deletes are applied before puts. A negative version leaves the stored
// version as it is. Every record is validated first; one bad record fails
// the call with ErrInvalid and nothing is written. The version rule
// itself is the caller's (subdevice.Registry.Accept). It returns after the
// commit.
func (s *Store) ApplyNotify(ctx context.Context, version int64, put []subdevice.Device, del []string) error {
	writes := make([]kvWrite, 0, len(put)+len(del)+1)
	for i := range del {
		if del[i] == "" || len(del[i]) > subdevice.MaxDeviceIDLen {
			return fmt.Errorf("%w: device id %q to delete", ErrInvalid, del[i])
		}
		writes = append(writes, kvWrite{bucket: bucketDevices, key: []byte(del[i])})
	}
	for i := range put {
		if err := checkDevice(&put[i]); err != nil {
			return err
		}
		rec, err := encodeDevice(&put[i])
		if err != nil {
			return err
		}
		writes = append(writes, kvWrite{bucket: bucketDevices, key: []byte(put[i].DeviceID), val: rec})
	}
	if version >= 0 {
		writes = append(writes, kvWrite{bucket: bucketMeta, key: keyListVersion, val: binary.BigEndian.AppendUint64(nil, uint64(version))})
	}
	if len(writes) == 0 {
		return nil
	}
	return s.do(ctx, &request{op: opWrite, writes: writes})
}

// PutSecret stores the token secret of the device with node id nodeID and
// returns after the commit.
func (s *Store) PutSecret(ctx context.Context, nodeID string, secret []byte) error {
	if err := subdevice.ValidateNodeID(nodeID); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if len(secret) == 0 || len(secret) > MaxSecretLen {
		return fmt.Errorf("%w: secret of %d bytes (1-%d)", ErrInvalid, len(secret), MaxSecretLen)
	}
	return s.do(ctx, &request{op: opWrite, writes: []kvWrite{{bucket: bucketTokens, key: []byte(nodeID), val: bytes.Clone(secret)}}})
}

// Secret returns a copy of the token secret of nodeID and whether one is
// stored.
func (s *Store) Secret(nodeID string) ([]byte, bool, error) {
	if nodeID == "" {
		return nil, false, nil
	}
	return s.get(bucketTokens, []byte(nodeID))
}

// DeleteSecret removes the token secret of nodeID (absent is not an error)
// and returns after the commit.
func (s *Store) DeleteSecret(ctx context.Context, nodeID string) error {
	if nodeID == "" || len(nodeID) > subdevice.MaxNodeIDLen {
		return fmt.Errorf("%w: node id %q", ErrInvalid, nodeID)
	}
	return s.do(ctx, &request{op: opWrite, writes: []kvWrite{{bucket: bucketTokens, key: []byte(nodeID)}}})
}

// PutMeta stores a small opaque value under key (1-MaxMetaKeyLen bytes) and
// returns after the commit. A nil or empty val deletes the key.
func (s *Store) PutMeta(ctx context.Context, key string, val []byte) error {
	if key == "" || len(key) > MaxMetaKeyLen {
		return fmt.Errorf("%w: meta key of %d bytes (1-%d)", ErrInvalid, len(key), MaxMetaKeyLen)
	}
	if len(val) > MaxMetaValueLen {
		return fmt.Errorf("%w: meta value of %d bytes, limit %d", ErrInvalid, len(val), MaxMetaValueLen)
	}
	w := kvWrite{bucket: bucketMeta, key: []byte(userMetaPrefix + key)}
	if len(val) > 0 {
		w.val = bytes.Clone(val)
	}
	return s.do(ctx, &request{op: opWrite, writes: []kvWrite{w}})
}

// Meta returns a copy of the value stored under key by PutMeta and whether
// there is one.
func (s *Store) Meta(key string) ([]byte, bool, error) {
	if key == "" {
		return nil, false, nil
	}
	return s.get(bucketMeta, []byte(userMetaPrefix+key))
}

func (s *Store) get(bucket, key []byte) ([]byte, bool, error) {
	var out []byte
	err := s.view(func(tx *bbolt.Tx) error {
		if v := tx.Bucket(bucket).Get(key); v != nil {
			out = bytes.Clone(v)
		}
		return nil
	})
	if err != nil {
		return nil, false, err
	}
	return out, out != nil, nil
}

// Flush returns once every write request queued before it (including Acks
// and AppendAsync items) has been committed or failed.
func (s *Store) Flush(ctx context.Context) error {
	return s.do(ctx, &request{op: opWrite})
}
