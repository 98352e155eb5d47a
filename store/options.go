package store

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Overflow policies for Options.Overflow.
const (
	// OverflowReject makes Append fail with ErrOutboxFull when the outbox is
	// full; the device is answered busy and keeps its data.
	OverflowReject = "reject"
	// OverflowDropOldest deletes the oldest outbox entries, in the same
	// transaction, until the new items fit; every drop is counted.
	OverflowDropOldest = "drop-oldest"
)

// Defaults applied to zero fields of Options.
const (
	DefaultLockTimeout    = 2 * time.Second
	DefaultCommitInterval = 2 * time.Millisecond
	DefaultCommitMaxOps   = 1024
	DefaultQueueSize      = 8192
	DefaultOutboxMaxBytes = 256 << 20
	// DefaultMaxPayloadBytes follows the platform's 1 MB PUBLISH limit
	// (iotda-protocol §7): a larger fragment could never be published.
	DefaultMaxPayloadBytes = 1 << 20
)

// Fixed limits on small values. They guard the file against misuse; real
// values are far smaller.
const (
	// MaxTopicLen bounds Item.Topic. Policy topics are at most 128 bytes and
	// custom $oc topics about 210 (iotda-protocol §2.1).
	MaxTopicLen = 512
	// MaxMetaKeyLen bounds a PutMeta key.
	MaxMetaKeyLen = 128
	// MaxMetaValueLen bounds a PutMeta value.
	MaxMetaValueLen = 1 << 20
	// MaxSecretLen bounds a token secret.
	MaxSecretLen = 4096
)

// Options configures Open. Zero fields take the defaults above.
type Options struct {
	// Dir holds the database; it is created with mode 0700 if missing. The
	// file is Dir/subgate.db with mode 0600.
	Dir string
	// LockTimeout bounds the wait for the file lock, so that a second
	// instance fails with ErrLocked instead of hanging (default 2s).
	LockTimeout time.Duration
	// CommitInterval is the longest a write waits for others to share its
	// transaction (default 2ms). A negative value disables the wait: the
	// writer commits whatever is queued at once.
	CommitInterval time.Duration
	// CommitMaxOps is the most write requests in one transaction (default
	// 1024).
	CommitMaxOps int
	// QueueSize bounds the write-request queue (default 8192). When it is
	// full, writes fail at once with ErrBusy and are counted.
	QueueSize int
	// OutboxMaxBytes bounds the payload bytes held in the outbox (default
	// 256 MiB).
	OutboxMaxBytes int64
	// MaxPayloadBytes bounds one item's payload (default 1 MiB); a larger
	// item fails with ErrTooLarge. It may not exceed OutboxMaxBytes.
	MaxPayloadBytes int
	// Overflow is what a full outbox does to Append: OverflowReject (the
	// default) or OverflowDropOldest.
	Overflow string
	// NoSync skips fsync on commit. Tests only: a crash may lose committed
	// data.
	NoSync bool
	// Logger receives the store's logs (component=store); nil discards.
	Logger *slog.Logger
	// Registerer receives the store's collectors; nil registers nothing.
	Registerer prometheus.Registerer
	// Now is the clock for Item.Enqueued, the oldest-age gauge and log rate
	// limits (default time.Now).
	Now func() time.Time
}

// withDefaults returns o with every zero field set to its default.
func (o Options) withDefaults() Options {
	if o.LockTimeout == 0 {
		o.LockTimeout = DefaultLockTimeout
	}
	if o.CommitInterval == 0 {
		o.CommitInterval = DefaultCommitInterval
	}
	if o.CommitMaxOps == 0 {
		o.CommitMaxOps = DefaultCommitMaxOps
	}
	if o.QueueSize == 0 {
		o.QueueSize = DefaultQueueSize
	}
	if o.OutboxMaxBytes == 0 {
		o.OutboxMaxBytes = DefaultOutboxMaxBytes
	}
	if o.MaxPayloadBytes == 0 {
		o.MaxPayloadBytes = min(DefaultMaxPayloadBytes, int(o.OutboxMaxBytes))
	}
	if o.Overflow == "" {
		o.Overflow = OverflowReject
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Validate reports every problem with o after defaults are applied.
func (o Options) Validate() error {
	o = o.withDefaults()
	var errs []error
	if o.Dir == "" {
		errs = append(errs, errors.New("store: Dir is required"))
	}
	if o.LockTimeout < 0 {
		errs = append(errs, fmt.Errorf("store: LockTimeout %s is negative", o.LockTimeout))
	}
	if o.CommitMaxOps < 1 {
		errs = append(errs, fmt.Errorf("store: CommitMaxOps %d is below 1", o.CommitMaxOps))
	}
	if o.QueueSize < 1 {
		errs = append(errs, fmt.Errorf("store: QueueSize %d is below 1", o.QueueSize))
	}
	if o.OutboxMaxBytes < 1 {
		errs = append(errs, fmt.Errorf("store: OutboxMaxBytes %d is below 1", o.OutboxMaxBytes))
	}
	if o.MaxPayloadBytes < 1 {
		errs = append(errs, fmt.Errorf("store: MaxPayloadBytes %d is below 1", o.MaxPayloadBytes))
	} else if int64(o.MaxPayloadBytes) > o.OutboxMaxBytes {
		errs = append(errs, fmt.Errorf("store: MaxPayloadBytes %d exceeds OutboxMaxBytes %d", o.MaxPayloadBytes, o.OutboxMaxBytes))
	}
	if o.Overflow != OverflowReject && o.Overflow != OverflowDropOldest {
		errs = append(errs, fmt.Errorf("store: Overflow %q is not %q or %q", o.Overflow, OverflowReject, OverflowDropOldest))
	}
	return errors.Join(errs...)
}
