package gateway

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is a settable time source; the governor's timers still run in
// real time, so a test moves the clock and then pokes the governor.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) now() time.Time { return time.Unix(0, c.ns.Load()) }

func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// startGovernor runs a governor of n publishes per second (no margin) on a
// fake clock.
func startGovernor(t *testing.T, n int) (*governor, *fakeClock) {
	t.Helper()
	clk := &fakeClock{}
	clk.ns.Store(time.Unix(1_700_000_000, 0).UnixNano())
	g := newGovernor(float64(n), 0, 0, clk.now)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		g.run(ctx, nil, nil)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return g, clk
}

// grant asks for a permit in the background; the channel is closed when
// it is granted.
func grant(g *governor) chan struct{} {
	ch := make(chan struct{})
	go func() {
		if g.acquire(context.Background(), ClassTelemetry, 100) == nil {
			close(ch)
		}
	}()
	return ch
}

func mustGrant(t *testing.T, g *governor, clk *fakeClock, ch chan struct{}, what string) {
	t.Helper()
	for {
		select {
		case <-ch:
			return
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: no permit", what)
		case <-time.After(time.Millisecond):
			g.poke() // re-evaluate with the fake clock
		}
	}
}

// notGranted checks that a permit stays refused while the governor is
// poked for a while: the one place a test has to wait for something not
// to happen.
func notGranted(t *testing.T, g *governor, ch chan struct{}, what string) {
	t.Helper()
	for range 20 {
		g.poke()
		select {
		case <-ch:
			t.Fatalf("%s: permit granted", what)
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// TestGovernorCountsOnTheWire: permits hold room until their publish is
// written; late writes are counted when they happen, so the window after
// them is full even though the grants were long ago.
func TestGovernorCountsOnTheWire(t *testing.T) {
	g, clk := startGovernor(t, 5)
	for i := range 5 {
		clk.advance(200 * time.Millisecond) // pacing: one permit per 200 ms
		mustGrant(t, g, clk, grant(g), "permit within the window")
		_ = i
	}
	// Five granted, none written: a sixth must wait however long the
	// writes take.
	sixth := grant(g)
	clk.advance(3 * time.Second)
	notGranted(t, g, sixth, "five permits unwritten")
	// The five go out now, together: the window is full from here.
	for range 5 {
		g.wrote()
	}
	clk.advance(900 * time.Millisecond)
	notGranted(t, g, sixth, "five writes 900 ms ago")
	clk.advance(101 * time.Millisecond)
	mustGrant(t, g, clk, sixth, "five writes a second ago")
}

// TestGovernorReleaseAndReset: an unused permit and permits of a lost
// connection give their room back.
func TestGovernorReleaseAndReset(t *testing.T) {
	g, clk := startGovernor(t, 3)
	for range 3 {
		clk.advance(400 * time.Millisecond)
		mustGrant(t, g, clk, grant(g), "first three")
	}
	fourth := grant(g)
	clk.advance(time.Second)
	notGranted(t, g, fourth, "three unwritten")
	g.release()
	mustGrant(t, g, clk, fourth, "after a release")
	fifth := grant(g)
	clk.advance(time.Second)
	notGranted(t, g, fifth, "three unwritten again")
	g.reset()
	mustGrant(t, g, clk, fifth, "after a reset")
}

// TestGovernorStalePermit: a permit whose write is never reported stops
// holding room after stale and counts as written then.
func TestGovernorStalePermit(t *testing.T) {
	g, clk := startGovernor(t, 2)
	g.stale = 5 * time.Second
	clk.advance(time.Second)
	for range 2 {
		mustGrant(t, g, clk, grant(g), "first two") // same instant: pacing burst
	}
	third := grant(g)
	clk.advance(4900 * time.Millisecond)
	notGranted(t, g, third, "two unwritten, not stale yet")
	clk.advance(200 * time.Millisecond) // both stale: counted as written now
	notGranted(t, g, third, "stale permits just counted as written")
	clk.advance(time.Second)
	mustGrant(t, g, clk, third, "a second after the stale permits")
}

// TestGovernorClassOrder: a response that arrives while a backlog
// publish waits for room is granted first.
func TestGovernorClassOrder(t *testing.T) {
	g, clk := startGovernor(t, 1)
	clk.advance(2 * time.Second)
	mustGrant(t, g, clk, grant(g), "first")
	// The sends return once the governor holds the requests; both wait
	// behind the unwritten first permit.
	backlog := govReq{bytes: 10, grant: make(chan struct{})}
	g.reqs[ClassBacklog] <- backlog
	response := govReq{bytes: 10, grant: make(chan struct{})}
	g.reqs[ClassResponse] <- response
	g.wrote()
	clk.advance(2 * time.Second)
	mustGrant(t, g, clk, response.grant, "response")
	notGranted(t, g, backlog.grant, "backlog behind the unwritten response")
	g.wrote()
	clk.advance(2 * time.Second)
	mustGrant(t, g, clk, backlog.grant, "backlog")
}
