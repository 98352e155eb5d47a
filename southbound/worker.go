package southbound

import (
	"sync"

	"github.com/subgate/subgate/southbound/frame"
)

type itemKind uint8

const (
	// itemFrame is a decoded frame (hello included). Bounded by
	// Config.WorkerQueue.
	itemFrame itemKind = iota + 1
	// itemClose says the connection closed: Logout, fail what waits.
	// At most one per connection, so bounded by MaxConns.
	itemClose
	// itemDone runs a SendThen callback. Bounded by the writes in flight,
	// which MaxOutbound bounds.
	itemDone
)

// item is one unit of work for a worker. The frame is held by value so a
// queued frame costs no allocation beyond its cloned slices.
type item struct {
	c    *Conn
	kind itemKind
	f    frame.Frame
	done func(error)
	err  error
}

// worker runs Handler calls for the connections mapped to it, in the order
// their items were queued. The queue is a FIFO with two admission classes:
// frames are refused once WorkerQueue of them wait (the caller answers
// busy); control items (close, write completions) are always admitted,
// because dropping them would break Logout or SendThen, and their number
// is bounded by the connections and their outbound bytes.
type worker struct {
	s    *Server
	wake chan struct{} // capacity 1: "the queue may be non-empty"

	// mu guards the following fields.
	mu     sync.Mutex
	q      ring
	frames int // itemFrame entries in q
	closed bool
}

func newWorker(s *Server) *worker {
	return &worker{s: s, wake: make(chan struct{}, 1)}
}

// push queues it. A frame is refused (false) when WorkerQueue frames wait
// or the worker stopped; a control item only when the worker stopped.
// Never blocks.
func (w *worker) push(it item) bool {
	w.mu.Lock()
	if w.closed || (it.kind == itemFrame && w.frames >= w.s.cfg.WorkerQueue) {
		w.mu.Unlock()
		return false
	}
	if it.kind == itemFrame {
		w.frames++
	}
	w.q.push(it)
	w.mu.Unlock()
	w.s.m.queueDepth.Inc()
	select {
	case w.wake <- struct{}{}:
	default:
	}
	return true
}

// stop makes run return once the queue is empty.
func (w *worker) stop() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *worker) run() {
	for {
		w.mu.Lock()
		it, ok := w.q.pop()
		if ok && it.kind == itemFrame {
			w.frames--
		}
		closed := w.closed
		w.mu.Unlock()
		if !ok {
			if closed {
				return
			}
			<-w.wake
			continue
		}
		w.s.m.queueDepth.Dec()
		w.s.handle(&it)
	}
}

// ring is a growable FIFO of items.
type ring struct {
	buf  []item
	head int
	n    int
}

func (r *ring) push(it item) {
	if r.n == len(r.buf) {
		size := max(16, 2*len(r.buf))
		buf := make([]item, size)
		for i := range r.n {
			buf[i] = r.buf[(r.head+i)%len(r.buf)]
		}
		r.buf, r.head = buf, 0
	}
	r.buf[(r.head+r.n)%len(r.buf)] = it
	r.n++
}

func (r *ring) pop() (item, bool) {
	if r.n == 0 {
		return item{}, false
	}
	it := r.buf[r.head]
	r.buf[r.head] = item{}
	r.head = (r.head + 1) % len(r.buf)
	r.n--
	if r.n == 0 && len(r.buf) > 1024 {
		// Give back the memory of a burst.
		r.buf, r.head = nil, 0
	}
	return it, true
}
