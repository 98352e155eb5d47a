package gateway

import (
	"context"
	"time"
)

// Class is a publish priority class of the quota governor. Lower values
// are served first when tokens are scarce.
type Class int

// Priority classes, highest first (issue 4: responses > management > OTA
// progress > live telemetry > backlog replay).
const (
	ClassResponse Class = iota
	ClassManagement
	ClassOTA
	ClassTelemetry
	ClassBacklog
	numClasses
)

var classNames = [numClasses]string{"response", "management", "ota", "telemetry", "backlog"}

func (c Class) String() string { return classNames[c] }

// governor hands out publish permits under two token buckets (messages/s
// and bytes/s), serving waiters strictly by class. One goroutine (run)
// owns the buckets; callers only send requests on per-class channels.
type governor struct {
	rate      float64 // messages per second
	byteRate  float64 // bytes per second; 0 = unlimited
	burst     float64
	byteBurst float64
	reqs      [numClasses]chan govReq
	now       func() time.Time
	tokens    chan float64 // snapshots for the metric, capacity 1
}

type govReq struct {
	bytes int
	grant chan struct{}
}

func newGovernor(msgsPerSec float64, bytesPerSec int64, now func() time.Time) *governor {
	g := &governor{
		rate:     msgsPerSec,
		byteRate: float64(bytesPerSec),
		// A burst of one second's worth at most: the platform counts per
		// second (§7), so a larger burst would overshoot its window.
		burst:  max(1, msgsPerSec),
		now:    now,
		tokens: make(chan float64, 1),
	}
	g.byteBurst = max(g.byteRate, 1<<20)
	for i := range g.reqs {
		g.reqs[i] = make(chan govReq)
	}
	return g
}

// acquire waits for a permit to publish n bytes in class c.
func (g *governor) acquire(ctx context.Context, c Class, n int) error {
	r := govReq{bytes: n, grant: make(chan struct{})}
	select {
	case g.reqs[c] <- r:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-r.grant:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run serves permits until ctx is done.
func (g *governor) run(ctx context.Context, level func(float64)) {
	tokens, btokens := g.burst, g.byteBurst
	last := g.now()
	refill := func() {
		now := g.now()
		el := now.Sub(last).Seconds()
		last = now
		tokens = min(g.burst, tokens+el*g.rate)
		if g.byteRate > 0 {
			btokens = min(g.byteBurst, btokens+el*g.byteRate)
		}
		if level != nil {
			level(tokens)
		}
	}
	for {
		r, ok := g.next(ctx)
		if !ok {
			return
		}
		for {
			refill()
			need := 0.0
			if tokens < 1 {
				need = (1 - tokens) / g.rate
			}
			if g.byteRate > 0 && btokens < float64(r.bytes) && btokens < g.byteBurst {
				need = max(need, (min(float64(r.bytes), g.byteBurst)-btokens)/g.byteRate)
			}
			if need <= 0 {
				break
			}
			t := time.NewTimer(time.Duration(need * float64(time.Second)))
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		tokens--
		if g.byteRate > 0 {
			btokens -= float64(r.bytes)
		}
		close(r.grant)
	}
}

// next returns the waiting request of the highest class.
func (g *governor) next(ctx context.Context) (govReq, bool) {
	for c := range numClasses {
		select {
		case r := <-g.reqs[c]:
			return r, true
		default:
		}
	}
	select {
	case <-ctx.Done():
		return govReq{}, false
	case r := <-g.reqs[ClassResponse]:
		return r, true
	case r := <-g.reqs[ClassManagement]:
		return r, true
	case r := <-g.reqs[ClassOTA]:
		return r, true
	case r := <-g.reqs[ClassTelemetry]:
		return r, true
	case r := <-g.reqs[ClassBacklog]:
		return r, true
	}
}
