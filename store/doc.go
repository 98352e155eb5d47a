// Package store is subgate's durable state: sub-device records and the
// platform's list version, per-device token secrets, small metadata, and the
// uplink outbox. It is the only package that imports bbolt, and it never hands
// out a transaction: every method speaks the domain.
//
// # Invariants
//
// Uplink is never lost once a device was told it is accepted: Append returns
// only after the transaction holding the items has committed (fsync'd unless
// Options.NoSync), and an item leaves the outbox only through Ack, which the
// northbound calls after the platform's PUBACK (go-style §9, §10). On Open the
// outbox is scanned, so OutboxStats is exact across restarts. The schema
// version in the meta bucket is checked on Open; a newer or unknown schema is
// refused with ErrSchema rather than guessed at.
//
// # Concurrency
//
// One writer goroutine owns every write. Callers submit requests on a bounded
// queue (Options.QueueSize); a full queue answers ErrBusy at once instead of
// blocking. The writer groups up to Options.CommitMaxOps requests, or whatever
// arrives within Options.CommitInterval of the first one, into a single bbolt
// Update, so throughput does not collapse to one fsync per frame (etcd's batch
// interval and limit). Reads (LoadDevices, Secret, Meta, Peek) run in short
// read transactions on the caller's goroutine and copy everything out. All
// methods are safe for concurrent use. Close stops intake, commits everything
// already queued, stops the writer and closes the file; no goroutine is left.
package store
