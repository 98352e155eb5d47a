package southbound

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// gnetLogger adapts gnet's printf-style logger to slog (go-style §5).
type gnetLogger struct{ l *slog.Logger }

func (g gnetLogger) log(level slog.Level, format string, args []any) {
	if !g.l.Enabled(context.Background(), level) {
		return
	}
	g.l.Log(context.Background(), level, "gnet", "err", fmt.Sprintf(format, args...))
}

func (g gnetLogger) Debugf(format string, args ...any) { g.log(slog.LevelDebug, format, args) }
func (g gnetLogger) Infof(format string, args ...any)  { g.log(slog.LevelInfo, format, args) }
func (g gnetLogger) Warnf(format string, args ...any)  { g.log(slog.LevelWarn, format, args) }
func (g gnetLogger) Errorf(format string, args ...any) { g.log(slog.LevelError, format, args) }

// Fatalf logs at error level: a library must not end the process.
func (g gnetLogger) Fatalf(format string, args ...any) { g.log(slog.LevelError, format, args) }

// rateLog writes lines about misbehaving devices at most burst per
// interval; the next line written after a quiet spell says how many were
// suppressed (n). With 100k devices one flapping fleet must not flood the
// log.
type rateLog struct {
	l        *slog.Logger
	level    slog.Level
	interval time.Duration
	burst    int

	// mu guards the following fields.
	mu         sync.Mutex
	window     time.Time
	written    int
	suppressed int
}

func newRateLog(l *slog.Logger, level slog.Level, burst int, interval time.Duration) *rateLog {
	return &rateLog{l: l, level: level, burst: burst, interval: interval}
}

// emit logs msg with args unless the budget of the current window is spent.
func (r *rateLog) emit(msg string, args ...any) {
	if !r.l.Enabled(context.Background(), r.level) {
		return
	}
	now := time.Now()
	r.mu.Lock()
	if now.Sub(r.window) >= r.interval {
		r.window, r.written = now, 0
	}
	if r.written >= r.burst {
		r.suppressed++
		r.mu.Unlock()
		return
	}
	r.written++
	dropped := r.suppressed
	r.suppressed = 0
	r.mu.Unlock()
	if dropped > 0 {
		args = append(args, "n", dropped)
	}
	r.l.Log(context.Background(), r.level, msg, args...)
}
