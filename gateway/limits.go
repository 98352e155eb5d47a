package gateway

import (
	"sync"
	"time"
)

// limitLog logs a bound being hit at most once per 10 s per bound, with how
// many hits the line stands for (go-style §5: with 100k devices per-event
// warnings would flood the log; the metric counts every hit).
type limitLog struct {
	mu   sync.Mutex
	last map[string]time.Time
	n    map[string]int
}

// hit counts a hit of the named bound in subgate_gateway_limit_hits_total
// and logs it, rate-limited.
func (g *Gateway) hit(limit string, attrs ...any) {
	g.m.limitHits.WithLabelValues(limit).Inc()
	l := &g.limits
	now := g.now()
	l.mu.Lock()
	if l.last == nil {
		l.last, l.n = map[string]time.Time{}, map[string]int{}
	}
	l.n[limit]++
	if now.Sub(l.last[limit]) < 10*time.Second {
		l.mu.Unlock()
		return
	}
	n := l.n[limit]
	l.n[limit], l.last[limit] = 0, now
	l.mu.Unlock()
	g.log.Warn("limit hit", append([]any{"component", "gateway", "limit", limit, "n", n}, attrs...)...)
}
