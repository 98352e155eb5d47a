package store

import "errors"

// Errors of intake and backpressure.
var (
	// ErrClosed is returned by every method once Close has begun.
	ErrClosed = errors.New("store: closed")
	// ErrBusy means the bounded write queue is full: the request was not
	// queued and nothing was written. The caller answers busy and retries.
	ErrBusy = errors.New("store: write queue full")
	// ErrOutboxFull means the outbox holds Options.OutboxMaxBytes payload
	// bytes and the overflow policy is "reject" (or the request alone is
	// larger than the outbox). Nothing was written.
	ErrOutboxFull = errors.New("store: outbox full")
)

// Errors of bad input. Nothing is written when they are returned.
var (
	// ErrInvalid wraps every rejection of a malformed argument.
	ErrInvalid = errors.New("store: invalid argument")
	// ErrTooLarge means an item's payload exceeds Options.MaxPayloadBytes.
	ErrTooLarge = errors.New("store: payload too large")
)

// Errors of the database file.
var (
	// ErrSchema means the file's schema version is newer than this build
	// understands, missing, or malformed; the file is left untouched.
	ErrSchema = errors.New("store: unsupported schema")
	// ErrLocked means another process (or another Store in this process)
	// holds the database file and did not release it within
	// Options.LockTimeout.
	ErrLocked = errors.New("store: database is locked by another instance")
	// ErrCorrupt means a stored record could not be decoded.
	ErrCorrupt = errors.New("store: corrupt record")
)
