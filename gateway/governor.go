package gateway

import (
	"context"
	"math"
	"time"
)

// Class is a publish priority class of the quota governor. Lower values
// are served first when permits are scarce.
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

// DefaultQuotaMargin stretches the quota window so that publishes still
// arrive more than a second apart per quota at the platform despite
// scheduling and network jitter: 3 % of a second is 30 ms of tolerance
// (northbound.quota_margin; docs/performance-northbound.md).
const DefaultQuotaMargin = 0.03

// governor hands out publish permits so that no window of one second holds
// more publishes than the platform allows (iotda-protocol §7: 50 messages/s
// per connection), and, when configured, bytes/s stay under a token
// bucket. Waiters are served strictly by class. One goroutine (run) owns
// the state; callers send requests on per-class channels.
//
// The message limit is a sliding window (at most n grants in any window of
// n/rate seconds, stretched by the margin), the same rule the platform
// applies, with grants paced at the window's average rate (bursts of at
// most 3): long bursts would be compressed on the way and counted as a
// violation at the receiving end.
type governor struct {
	n         int           // grants per window
	window    time.Duration // window length
	byteRate  float64       // bytes per second; 0 = unlimited
	byteBurst float64
	reqs      [numClasses]chan govReq
	now       func() time.Time
}

type govReq struct {
	bytes int
	grant chan struct{}
}

func newGovernor(msgsPerSec float64, bytesPerSec int64, margin float64, now func() time.Time) *governor {
	n := max(1, int(math.Floor(msgsPerSec)))
	g := &governor{
		n:        n,
		window:   time.Duration(float64(n) / msgsPerSec * (1 + margin) * float64(time.Second)),
		byteRate: float64(bytesPerSec),
		now:      now,
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

// run serves permits until ctx is done. level, when set, receives the
// permits available right now after each grant (for the metric).
func (g *governor) run(ctx context.Context, level func(float64)) {
	ring := make([]time.Time, g.n) // grant times, oldest at next
	next := 0
	// Pacing: a token bucket at the window's average rate with a small
	// burst, so a publisher that comes late to its slot can catch up a
	// little without ever sending a long burst.
	pace := float64(g.n) / g.window.Seconds()
	const paceBurst = 3
	ptokens := float64(paceBurst)
	btokens := g.byteBurst
	last := g.now()
	for {
		r, ok := g.next(ctx)
		if !ok {
			return
		}
		for {
			now := g.now()
			el := now.Sub(last).Seconds()
			if g.byteRate > 0 {
				btokens = min(g.byteBurst, btokens+el*g.byteRate)
			}
			ptokens = min(paceBurst, ptokens+el*pace)
			last = now
			var wait time.Duration
			if oldest := ring[next]; !oldest.IsZero() {
				wait = oldest.Add(g.window).Sub(now)
			}
			if ptokens < 1 {
				wait = max(wait, time.Duration((1-ptokens)/pace*float64(time.Second)))
			}
			need := float64(min(r.bytes, int(g.byteBurst)))
			if g.byteRate > 0 && btokens < need {
				wait = max(wait, time.Duration((need-btokens)/g.byteRate*float64(time.Second)))
			}
			if wait <= 0 {
				break
			}
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		now := g.now()
		ptokens--
		ring[next] = now
		next = (next + 1) % g.n
		if g.byteRate > 0 {
			btokens -= float64(r.bytes)
		}
		close(r.grant)
		if level != nil {
			free := 0
			for _, t := range ring {
				if t.IsZero() || now.Sub(t) >= g.window {
					free++
				}
			}
			level(float64(free))
		}
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
