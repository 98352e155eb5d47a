package store

import (
	"encoding/binary"
	"fmt"

	"go.etcd.io/bbolt"
)

// FileName is the name of the database file inside Options.Dir.
const FileName = "subgate.db"

// schemaVersion is the layout this build reads and writes. Version 1 is the
// first; a later layout adds a step to migrations and bumps this constant.
const schemaVersion uint64 = 1

// Bucket names (go-style §9: one place for every name).
var (
	// bucketMeta holds the schema version, the sub-device list version and,
	// under userMetaPrefix, the opaque values of PutMeta.
	bucketMeta = []byte("meta")
	// bucketDevices maps a device id to an encoded subdevice.Device.
	bucketDevices = []byte("subdevices")
	// bucketTokens maps a node id to its token secret.
	bucketTokens = []byte("tokens")
	// bucketOutbox maps an 8-byte big-endian sequence to an encoded Item.
	// Big-endian keys iterate in sequence order.
	bucketOutbox = []byte("outbox")
	// bucketQuarantine receives outbox records found undecodable on Open,
	// under their original keys, so that a human can inspect them while the
	// outbox keeps flowing.
	bucketQuarantine = []byte("outbox_corrupt")
)

// allBuckets are created with a fresh file; bucketQuarantine is created on
// demand.
var allBuckets = [][]byte{bucketMeta, bucketDevices, bucketTokens, bucketOutbox}

// Keys in bucketMeta.
var (
	keySchemaVersion = []byte("schema_version")
	keyListVersion   = []byte("subdevices_version")
	// userMetaPrefix keeps PutMeta keys apart from the store's own keys.
	userMetaPrefix = "user/"
)

// migrations[v] upgrades a file from schema v to v+1 inside the open
// transaction. Schema 1 is the first layout, so there is no step yet; an
// older file without a step is refused with ErrSchema.
var migrations = map[uint64]func(tx *bbolt.Tx) error{}

// initSchema creates a fresh file's buckets and schema version, or checks an
// existing file's version: equal runs, older migrates in this transaction,
// newer or missing is refused (go-style §9, etcd's schema/version.go).
func initSchema(tx *bbolt.Tx) error {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		empty := true
		_ = tx.ForEach(func([]byte, *bbolt.Bucket) error {
			empty = false
			return nil
		})
		if !empty {
			return fmt.Errorf("%w: no meta bucket in a non-empty file (not a subgate database?)", ErrSchema)
		}
		for _, name := range allBuckets {
			if _, err := tx.CreateBucket(name); err != nil {
				return fmt.Errorf("store: create bucket %q: %w", name, err)
			}
		}
		return putU64(tx.Bucket(bucketMeta), keySchemaVersion, schemaVersion)
	}
	raw := meta.Get(keySchemaVersion)
	if raw == nil {
		return fmt.Errorf("%w: schema version missing", ErrSchema)
	}
	if len(raw) != 8 {
		return fmt.Errorf("%w: schema version is %d bytes, want 8", ErrSchema, len(raw))
	}
	v := binary.BigEndian.Uint64(raw)
	if v > schemaVersion {
		return fmt.Errorf("%w: file has schema %d, this build understands up to %d", ErrSchema, v, schemaVersion)
	}
	migrated := v < schemaVersion
	for ; v < schemaVersion; v++ {
		step, ok := migrations[v]
		if !ok {
			return fmt.Errorf("%w: no migration from schema %d", ErrSchema, v)
		}
		if err := step(tx); err != nil {
			return fmt.Errorf("store: migrate schema %d to %d: %w", v, v+1, err)
		}
	}
	for _, name := range allBuckets {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return fmt.Errorf("store: create bucket %q: %w", name, err)
		}
	}
	if !migrated {
		return nil
	}
	return putU64(tx.Bucket(bucketMeta), keySchemaVersion, schemaVersion)
}

func putU64(b *bbolt.Bucket, key []byte, v uint64) error {
	var buf [8]byte
	binary.BigEndian.PutUint64(buf[:], v)
	if err := b.Put(key, buf[:]); err != nil {
		return fmt.Errorf("store: put %q: %w", key, err)
	}
	return nil
}
