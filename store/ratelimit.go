package store

import (
	"sync"
	"time"
)

// logEvery is the least time between two log lines for one reason; events in
// between are counted and reported with the next line (go-style §5).
const logEvery = 10 * time.Second

// Reasons a bound is logged for.
const (
	limitQueueFull = iota
	limitOutboxFull
	limitDropped
	limitTooLarge
	limitAckFailed
	numLimits
)

// logLimiter rate-limits warnings per reason. It is safe for concurrent use.
type logLimiter struct {
	now func() time.Time
	// mu guards the following fields.
	mu      sync.Mutex
	last    [numLimits]time.Time
	pending [numLimits]uint64
}

// note records n events for reason. It reports whether to log now and, if
// so, how many events the line stands for (n plus those suppressed since
// the last line).
func (l *logLimiter) note(reason int, n uint64) (bool, uint64) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.pending[reason] += n
	if !l.last[reason].IsZero() && now.Sub(l.last[reason]) < logEvery {
		return false, 0
	}
	l.last[reason] = now
	total := l.pending[reason]
	l.pending[reason] = 0
	return true, total
}
