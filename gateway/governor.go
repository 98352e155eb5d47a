package gateway

import (
	"context"
	"math"
	"sync"
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
// arrive more than a second apart per quota at the platform despite jitter
// after they left the socket (they are counted when written): 1 % of a
// second is 10 ms of tolerance (northbound.quota_margin; decisions D21,
// docs/performance-northbound.md).
const DefaultQuotaMargin = 0.01

// governor hands out publish permits so that no window of one second holds
// more publishes than the platform allows (iotda-protocol §7: 50 messages/s
// per connection), and, when configured, bytes/s stay under a token
// bucket. Waiters are served strictly by class. One goroutine (run) serves
// the requests; callers send them on per-class channels.
//
// The message limit is a sliding window (at most n publishes in any window
// of n/rate seconds, stretched by the margin), the same rule the platform
// applies. It is counted on the wire: the northbound connection reports
// every PUBLISH written to its socket (wrote), and a permit is granted only
// while the publishes written within the window, plus the permits granted
// and not yet written, leave room. So a publish that waited inside the MQTT
// client, behind a slow socket or a descheduled writer, is counted when it
// really left, and a burst of such late writes cannot crowd a window.
// Grants are also paced at the window's average rate (bursts of at most 3).
type governor struct {
	n         int           // publishes per window
	window    time.Duration // window length
	byteRate  float64       // bytes per second; 0 = unlimited
	byteBurst float64
	reqs      [numClasses]chan govReq
	now       func() time.Time
	// stale is how long a granted permit may stay unwritten before it
	// stops holding room (it is then counted as written at that moment):
	// a safety net for a publish whose write is never reported.
	stale time.Duration
	log   func(msg string, args ...any)
	// observe, when set (before Run), gets the time of every write: the
	// tests and benchmarks count the cap on it, free of the jitter of a
	// simulator sharing the process.
	observe func(time.Time)

	mu     sync.Mutex
	wire   []time.Time // the last n write times, oldest at head
	head   int
	unsent []time.Time // grant times of permits not written yet, oldest first
	wake   chan struct{}
}

type govReq struct {
	bytes int
	at    time.Time // when it was asked for
	grant chan struct{}
}

func newGovernor(msgsPerSec float64, bytesPerSec int64, margin float64, now func() time.Time) *governor {
	n := max(1, int(math.Floor(msgsPerSec)))
	g := &governor{
		n:        n,
		window:   time.Duration(float64(n) / msgsPerSec * (1 + margin) * float64(time.Second)),
		byteRate: float64(bytesPerSec),
		now:      now,
		stale:    30 * time.Second,
		wire:     make([]time.Time, n),
		wake:     make(chan struct{}, 1),
	}
	g.byteBurst = max(g.byteRate, 1<<20)
	for i := range g.reqs {
		g.reqs[i] = make(chan govReq)
	}
	return g
}

// wrote records a PUBLISH written to the northbound socket. It never
// blocks for long (the MQTT client's writer calls it).
func (g *governor) wrote() {
	now := g.now()
	g.mu.Lock()
	g.recordLocked(now)
	if len(g.unsent) > 0 {
		g.unsent = g.unsent[1:]
	}
	g.mu.Unlock()
	if g.observe != nil {
		g.observe(now)
	}
	g.poke()
}

// release gives back a permit whose publish was not handed to the
// connection (it failed before the write).
func (g *governor) release() {
	g.mu.Lock()
	if len(g.unsent) > 0 {
		g.unsent = g.unsent[:len(g.unsent)-1]
	}
	g.mu.Unlock()
	g.poke()
}

// reset forgets the permits not written yet: called when the connection
// comes or goes, since the publishes they stood for died with the old one.
func (g *governor) reset() {
	g.mu.Lock()
	g.unsent = g.unsent[:0]
	g.mu.Unlock()
	g.poke()
}

func (g *governor) poke() {
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

func (g *governor) recordLocked(t time.Time) {
	g.wire[g.head] = t
	g.head = (g.head + 1) % g.n
}

// roomLocked returns how long to wait before one more publish fits the
// window (0: now; -1: only after a write or a release) and the room left
// now.
func (g *governor) roomLocked(now time.Time) (wait time.Duration, free int) {
	for len(g.unsent) > 0 && now.Sub(g.unsent[0]) >= g.stale {
		// Never reported as written: count it as written now.
		g.unsent = g.unsent[1:]
		g.recordLocked(now)
		if g.log != nil {
			g.log("a granted publish was not seen on the wire; counted as sent", "after", g.stale)
		}
	}
	// The ring is in write order: walk from the oldest write.
	inWindow := 0
	first := -1
	for i := range g.n {
		t := g.wire[(g.head+i)%g.n]
		if !t.IsZero() && now.Sub(t) < g.window {
			if first < 0 {
				first = i
			}
			inWindow++
		}
	}
	free = g.n - inWindow - len(g.unsent)
	if free > 0 {
		return 0, free
	}
	// need more writes to leave the window than there are in it: wait
	// for a write or a release.
	need := 1 - free
	if need > inWindow {
		return -1, 0
	}
	t := g.wire[(g.head+first+need-1)%g.n]
	return t.Add(g.window).Sub(now), 0
}

// acquire waits for a permit to publish n bytes in class c. A permit that
// is not used for a publish must be given back with release.
func (g *governor) acquire(ctx context.Context, c Class, n int) error {
	r := govReq{bytes: n, at: g.now(), grant: make(chan struct{})}
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
// permits available right now after each grant, and waited, when set, how
// long each granted request waited (for the metrics). It holds
// at most one waiting request per class and, whenever there is room,
// grants the highest class among them: a response that arrives while a
// backlog publish waits for room goes first.
func (g *governor) run(ctx context.Context, level func(float64), waited func(Class, time.Duration)) {
	// Pacing: a token bucket at the window's average rate with a small
	// burst, so a publisher that comes late to its slot can catch up a
	// little without ever sending a long burst.
	pace := float64(g.n) / g.window.Seconds()
	const paceBurst = 3
	ptokens := float64(paceBurst)
	btokens := g.byteBurst
	last := g.now()
	var waiting [numClasses]*govReq
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		for c := range numClasses {
			if waiting[c] == nil {
				select {
				case r := <-g.reqs[c]:
					waiting[c] = &r
				default:
				}
			}
		}
		var r *govReq
		best := Class(-1)
		for c := range numClasses {
			if waiting[c] != nil {
				r, best = waiting[c], c
				break
			}
		}
		var wait time.Duration
		if r != nil {
			now := g.now()
			el := now.Sub(last).Seconds()
			if g.byteRate > 0 {
				btokens = min(g.byteBurst, btokens+el*g.byteRate)
			}
			ptokens = min(paceBurst, ptokens+el*pace)
			last = now
			need := float64(min(r.bytes, int(g.byteBurst)))
			g.mu.Lock()
			room, free := g.roomLocked(now)
			if room == 0 && ptokens >= 1 && (g.byteRate <= 0 || btokens >= need) {
				// Granted: it holds room until its write is reported.
				g.unsent = append(g.unsent, now)
				free--
				g.mu.Unlock()
				ptokens--
				if g.byteRate > 0 {
					btokens -= float64(r.bytes)
				}
				close(r.grant)
				waiting[best] = nil
				if level != nil {
					level(float64(free))
				}
				if waited != nil {
					waited(best, now.Sub(r.at))
				}
				continue
			}
			g.mu.Unlock()
			wait = room
			if room < 0 {
				wait = g.stale // a write, a release or a reset wakes it sooner
			}
			if ptokens < 1 {
				wait = max(wait, time.Duration((1-ptokens)/pace*float64(time.Second)))
			}
			if g.byteRate > 0 && btokens < need {
				wait = max(wait, time.Duration((need-btokens)/g.byteRate*float64(time.Second)))
			}
			timer.Reset(max(wait, time.Millisecond/10))
		}
		// Wait for room, or for a request of a class not waiting yet.
		var in [numClasses]chan govReq
		for c := range numClasses {
			if waiting[c] == nil {
				in[c] = g.reqs[c]
			}
		}
		var fired <-chan time.Time
		if r != nil {
			fired = timer.C
		}
		select {
		case <-ctx.Done():
			return
		case <-fired:
		case <-g.wake:
		case q := <-in[ClassResponse]:
			waiting[ClassResponse] = &q
		case q := <-in[ClassManagement]:
			waiting[ClassManagement] = &q
		case q := <-in[ClassOTA]:
			waiting[ClassOTA] = &q
		case q := <-in[ClassTelemetry]:
			waiting[ClassTelemetry] = &q
		case q := <-in[ClassBacklog]:
			waiting[ClassBacklog] = &q
		}
		timer.Stop()
	}
}

// quotaWaited records how long a publish of class c waited for its permit.
// A wait is the quota being hit: counted and logged (rate-limited) like
// every other bound, with the class that waited.
func (g *Gateway) quotaWaited(c Class, d time.Duration) {
	g.m.quotaWait.WithLabelValues(c.String()).Observe(d.Seconds())
	if d >= time.Millisecond {
		g.hit("northbound_quota", "class", c.String(), "waited", d.Round(time.Millisecond))
	}
}
