package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/subgate/subgate/southbound/frame"
	"github.com/subgate/subgate/southbound/southboundtest"
)

// Phases of a run, shown in progress lines.
const (
	phaseConnecting = "connecting" // devices are still being launched or handshaking
	phaseHolding    = "holding"    // every device has connected or failed; -hold runs
	phaseDraining   = "draining"   // reports stopped; waiting for their acks (-drain)
	phaseClosing    = "closing"    // the devices are closing
	phaseDone       = "done"
)

// reportService is the service id of the simulated property reports.
const reportService = "devicesim"

// sim is one run of N devices. Create it with newSim and call run once.
type sim struct {
	cfg      config
	native   bool
	st       stats
	progress io.Writer // progress lines; nil = none
	now      func() time.Time
	// holdTimer starts the -hold timer; tests replace it to end the hold
	// on an event.
	holdTimer func(time.Duration) (<-chan time.Time, func() bool)
	start     time.Time

	// report is the uplink every device sends: a property report with
	// -payload bytes of value (native codecs) or a demo message. It is
	// shared read-only by all devices.
	report   frame.Frame
	services json.RawMessage // also the answer to a property get
	counter  *counterReports // -counter: numbered reports; nil without

	resolved    atomic.Int64  // handshakes finished, successful or not
	allResolved chan struct{} // closed when resolved reaches cfg.N
	// allGone gets a token when the last logged-in device is gone after
	// every handshake finished, to end -hold early.
	allGone chan struct{}
	// inflight counts the reports of all devices waiting for an ack;
	// drained gets a token whenever it drops to zero.
	inflight atomic.Int64
	drained  chan struct{}
	phase    atomic.Value // string
}

func newSim(cfg config, progress io.Writer) (*sim, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	codec, err := frame.ByName(cfg.Codec)
	if err != nil {
		return nil, usagef("-codec: %v", err)
	}
	s := &sim{
		cfg: cfg, native: codec.Native(), progress: progress, now: time.Now,
		allResolved: make(chan struct{}),
		allGone:     make(chan struct{}, 1),
		drained:     make(chan struct{}, 1),
		holdTimer: func(d time.Duration) (<-chan time.Time, func() bool) {
			t := time.NewTimer(d)
			return t.C, t.Stop
		},
	}
	value := payload(cfg.Payload)
	s.services = json.RawMessage(`[{"service_id":"` + reportService + `","properties":{"value":"` + value + `"}}]`)
	if s.native {
		s.report = frame.Frame{Type: frame.TypeProperties, Services: s.services}
		if cfg.Counter {
			s.counter = newCounterReports(value)
		}
	} else {
		s.report = frame.Frame{Type: frame.TypeMessage, Content: []byte(value)}
	}
	// Refuse a payload the codec cannot carry before connecting anyone.
	probe := s.report
	probe.Seq = 1
	probe.NodeID = cfg.nodeID(cfg.N - 1)
	if _, err := codec.AppendEncode(nil, probe); err != nil {
		return nil, usagef("-payload %d: %v", cfg.Payload, err)
	}
	s.phase.Store(phaseConnecting)
	return s, nil
}

// payload returns n printable bytes that need no escaping in JSON and
// contain neither '|' nor a line end (the demo framing).
func payload(n int) string {
	const alphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	var b strings.Builder
	b.Grow(n)
	for i := range n {
		b.WriteByte(alphabet[i%len(alphabet)])
	}
	return b.String()
}

// since is the time since the start of the run on the monotonic clock.
func (s *sim) since() time.Duration { return s.now().Sub(s.start) }

func (s *sim) summary(phase string) Summary {
	return s.st.summarize(phase, s.cfg.N, s.since())
}

// run connects the devices, holds them, drains their acks, closes them and
// returns the summary. The hold ends -hold after every handshake finished,
// or when every device is gone; -duration or ctx end the run at once,
// without draining. run returns only after every goroutine it started has
// exited.
func (s *sim) run(ctx context.Context) Summary {
	s.start = s.now()
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Duration)
	defer cancel()
	devCtx, stopDevices := context.WithCancel(ctx)
	defer stopDevices()
	sendCtx, stopSending := context.WithCancel(devCtx)
	defer stopSending()

	var aux sync.WaitGroup
	reportDone := make(chan struct{})
	if s.cfg.Report > 0 && s.progress != nil {
		aux.Go(func() { s.reportLoop(reportDone) })
	}
	// The launcher and every device goroutine it starts belong to devices.
	var devices sync.WaitGroup
	devices.Go(func() { s.launch(devCtx, sendCtx, &devices) })

	s.await(ctx)
	stopSending()
	s.drain(ctx)
	s.phase.Store(phaseClosing)
	stopDevices()
	devices.Wait()
	close(reportDone)
	aux.Wait()
	s.phase.Store(phaseDone)
	return s.summary(phaseDone)
}

// await blocks through the connecting and holding phases.
func (s *sim) await(ctx context.Context) {
	select {
	case <-s.allResolved:
	case <-ctx.Done():
		return
	}
	s.phase.Store(phaseHolding)
	if s.st.online.Load() == 0 {
		return
	}
	c, stop := s.holdTimer(s.cfg.Hold)
	defer stop()
	select {
	case <-c:
	case <-s.allGone:
	case <-ctx.Done():
	}
}

// drain waits, at most -drain, until no report waits for an ack, so that
// the acks of the last reports are counted rather than left unacked.
func (s *sim) drain(ctx context.Context) {
	if s.cfg.Drain <= 0 || ctx.Err() != nil || s.inflight.Load() == 0 {
		return
	}
	s.phase.Store(phaseDraining)
	t := time.NewTimer(s.cfg.Drain)
	defer t.Stop()
	for s.inflight.Load() > 0 {
		select {
		case <-s.drained:
		case <-t.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// settle counts n reports that stopped waiting for an ack.
func (s *sim) settle(n int) {
	if n > 0 && s.inflight.Add(-int64(n)) == 0 {
		select {
		case s.drained <- struct{}{}:
		default:
		}
	}
}

func (s *sim) reportLoop(done <-chan struct{}) {
	t := time.NewTicker(s.cfg.Report)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			fmt.Fprintln(s.progress, s.summary(s.phase.Load().(string)).Line())
		}
	}
}

// launch starts the devices at -connect-rate, with at most -max-pending
// handshakes in flight. It stops launching when ctx is done. Devices stop
// reporting when sendCtx is done, and close when ctx is.
func (s *sim) launch(ctx, sendCtx context.Context, wg *sync.WaitGroup) {
	b := newBucket(s.cfg.ConnectRate, s.cfg.ConnectBurst, s.now())
	pending := make(chan struct{}, s.cfg.MaxPending)
	for i := range s.cfg.N {
		if sleep(ctx, b.take(s.now())) != nil {
			return
		}
		select {
		case pending <- struct{}{}:
		case <-ctx.Done():
			return
		}
		wg.Go(func() { s.device(ctx, sendCtx, i, pending) })
	}
}

// resolve counts a finished handshake.
func (s *sim) resolve() {
	if s.resolved.Add(1) == int64(s.cfg.N) {
		close(s.allResolved)
	}
}

// device is the life of device i: connect, serve until ctx is done or the
// connection ends, close. It frees its pending slot once the handshake is
// over.
func (s *sim) device(ctx, sendCtx context.Context, i int, pending <-chan struct{}) {
	node := s.cfg.nodeID(i)
	c, err := s.connect(ctx, i, node)
	<-pending
	if err != nil {
		s.resolve()
		return
	}
	s.st.connected.Add(1)
	s.st.online.Add(1)
	s.st.noteConnect(s.since())
	s.resolve()

	d := &device{s: s, c: c}
	if s.counter != nil {
		d.ctr = &deviceCounter{reports: s.counter}
	}
	if s.cfg.Ack {
		d.win = newWindow(s.cfg.Window)
	}
	d.serve(ctx, sendCtx)
	c.Close()
	if d.win != nil {
		n := d.win.pending()
		s.st.unacked.Add(int64(n))
		s.settle(n)
	}
	if s.st.online.Add(-1) == 0 && s.resolved.Load() == int64(s.cfg.N) {
		select {
		case s.allGone <- struct{}{}:
		default:
		}
	}
}

// connect dials and logs device i in. Failures are counted here, except
// those caused by the end of the run.
func (s *sim) connect(ctx context.Context, i int, node string) (*southboundtest.Client, error) {
	hctx, cancel := context.WithTimeout(ctx, s.cfg.ConnectTimeout)
	defer cancel()
	c, err := southboundtest.Dial(hctx, southboundtest.Options{
		Addr:        s.cfg.Addr,
		Codec:       s.cfg.Codec,
		NodeID:      node,
		ProductID:   s.cfg.Product,
		Secret:      s.cfg.secretFor(node),
		LocalAddr:   s.cfg.source(i),
		DialTimeout: s.cfg.ConnectTimeout,
		RecvQueue:   s.cfg.RecvQueue,
		// The gateway's demo codec ends a message at a line end; without
		// one, back-to-back messages would merge in one read.
		DemoNewline: true,
	})
	if err != nil {
		if ctx.Err() == nil {
			s.st.fail(kindDial)
		}
		return nil, err
	}
	if s.native {
		_, err = c.Hello(hctx)
	} else {
		err = s.demoLogin(hctx, c)
	}
	if err != nil {
		c.Close()
		var fe *frame.Error
		switch {
		case ctx.Err() != nil:
		case errors.As(err, &fe) && !fe.Fatal:
			s.st.refuse(fe.Code)
		case errors.Is(err, errDemoRefused):
			s.st.fail(kindDemoRefused)
		case errors.Is(err, errSend):
			s.st.fail(kindSend)
		case hctx.Err() != nil:
			s.st.fail(kindHelloTimeout)
		default:
			s.st.fail(kindHello)
		}
		return nil, err
	}
	return c, nil
}

// Handshake failures of the demo protocol.
var (
	errSend        = errors.New("devicesim: send failed")
	errDemoRefused = errors.New("devicesim: the gateway refused the demo device")
)

// demoPrefixError starts the gateway's demo reply that reports a problem
// (docs/device-protocol.md §10).
const demoPrefixError = "error:"

// demoLogin logs a demo device in: its first message does (iotda-protocol
// §6.1), and the gateway answers each message with one line, "error: ..."
// for a refusal and otherwise "sub device: <id> go online" (or "... add"
// while the device is being registered).
func (s *sim) demoLogin(ctx context.Context, c *southboundtest.Client) error {
	if err := c.Send(s.report); err != nil {
		return fmt.Errorf("%w: %w", errSend, err)
	}
	s.st.framesOut.Add(1)
	f, err := c.Recv(ctx)
	if err != nil {
		return err
	}
	s.st.framesIn.Add(1)
	if bytes.HasPrefix(f.Content, []byte(demoPrefixError)) {
		return fmt.Errorf("%w: %.200s", errDemoRefused, f.Content)
	}
	return nil
}

// device is one logged-in connection.
type device struct {
	s   *sim
	c   *southboundtest.Client
	win *window        // nil without -ack
	ctr *deviceCounter // nil without -counter
}

// serve runs until ctx is done or the connection fails. Without reports
// one goroutine receives; with -msg-rate this goroutine sends until
// sendCtx is done and a second one receives.
func (d *device) serve(ctx, sendCtx context.Context) {
	if d.s.cfg.MsgRate <= 0 {
		d.receive(ctx)
		return
	}
	dead := make(chan struct{})
	var rx sync.WaitGroup
	rx.Go(func() {
		defer close(dead)
		d.receive(ctx)
	})
	if d.sendLoop(sendCtx, dead) {
		// Reports stopped: keep receiving acks until the run closes.
		select {
		case <-ctx.Done():
		case <-dead:
		}
	}
	// Unblock the receiver if it is still running.
	d.c.Close()
	rx.Wait()
}

// sendLoop sends reports at -msg-rate until ctx is done, dead is closed or
// a write fails; it reports whether it stopped because ctx was done. The
// first report comes at a random point of the first interval so that
// devices do not report in lockstep; a device that falls behind skips the
// missed slots rather than bursting.
func (d *device) sendLoop(ctx context.Context, dead <-chan struct{}) bool {
	interval := max(time.Duration(float64(time.Second)/d.s.cfg.MsgRate), time.Microsecond)
	next := time.Now().Add(rand.N(interval))
	t := time.NewTimer(time.Until(next))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return true
		case <-dead:
			return false
		case <-t.C:
		}
		if d.send(ctx) != nil {
			return false
		}
		next = next.Add(interval)
		now := time.Now()
		if next.Before(now) {
			next = now
		}
		t.Reset(next.Sub(now))
	}
}

// send sends one report; with -ack it takes a seq from the window first,
// and skips the report when the window is full.
func (d *device) send(ctx context.Context) error {
	f := d.s.report
	if d.win != nil {
		seq, ok := d.win.add(d.s.since())
		if !ok {
			d.s.st.skipped.Add(1)
			return nil
		}
		d.s.inflight.Add(1)
		// Checked after counting the report in flight: a drain that saw
		// zero in flight after stopping the senders can then trust that
		// no report slips out behind its back.
		if ctx.Err() != nil {
			d.forget(seq)
			return nil
		}
		f.Seq = seq
	}
	if d.ctr != nil {
		f = d.ctr.next(f)
	}
	if err := d.c.Send(f); err != nil {
		if d.win != nil {
			d.forget(f.Seq)
		}
		d.sendFailed(ctx, err)
		return err
	}
	d.s.st.framesOut.Add(1)
	return nil
}

// sendFailed counts a failed write unless the run or the device is
// closing.
func (d *device) sendFailed(ctx context.Context, err error) {
	if ctx.Err() == nil && !errors.Is(err, southboundtest.ErrClosed) {
		d.s.st.kinds[kindSend].Add(1)
	}
}

// receive handles what the gateway sends until ctx is done or the
// connection ends.
func (d *device) receive(ctx context.Context) {
	st := &d.s.st
	for {
		f, err := d.c.Recv(ctx)
		if err != nil {
			var fe *frame.Error
			if errors.As(err, &fe) && !fe.Fatal {
				st.kinds[kindDecode].Add(1)
				continue
			}
			if ctx.Err() == nil && !errors.Is(err, southboundtest.ErrClosed) {
				st.kinds[kindClosed].Add(1)
			}
			return
		}
		st.framesIn.Add(1)
		if err := d.handle(f); err != nil {
			d.sendFailed(ctx, err)
			return
		}
	}
}

// handle reacts to one frame from the gateway; it returns an error only
// when an answer could not be written.
func (d *device) handle(f frame.Frame) error {
	st := &d.s.st
	if !d.s.native {
		// Demo: every line is text; a problem is reported as "error: ...".
		if bytes.HasPrefix(f.Content, []byte(demoPrefixError)) {
			st.kinds[kindDemoError].Add(1)
		}
		return nil
	}
	switch f.Type {
	case frame.TypeAck:
		if d.win == nil {
			st.kinds[kindStrayAck].Add(1)
			return nil
		}
		sent, ok := d.forget(f.Seq)
		if !ok {
			st.kinds[kindStrayAck].Add(1)
			return nil
		}
		st.acks.Add(1)
		st.ackLatency.observe(d.s.since() - sent)
	case frame.TypeError:
		st.downErr[codeSlot(f.Code)].Add(1)
		if f.Seq != 0 && d.win != nil {
			// A refused report (busy, rate limited) will get no ack.
			d.forget(f.Seq)
		}
	case frame.TypeCommand:
		if !d.s.cfg.Answer {
			return nil
		}
		return d.answer(&st.cmdsAnswered, frame.Frame{
			Type: frame.TypeCommandResponse, RequestID: f.RequestID, ResultCode: 0,
			ResponseName: f.CommandName, Paras: json.RawMessage(`{"result":"success"}`),
		})
	case frame.TypePropertySet:
		if !d.s.cfg.Answer {
			return nil
		}
		return d.answer(&st.propsAnswered, frame.Frame{
			Type: frame.TypePropertySetResponse, RequestID: f.RequestID, ResultCode: 0, ResultDesc: "success",
		})
	case frame.TypePropertyGet:
		if !d.s.cfg.Answer {
			return nil
		}
		return d.answer(&st.propsAnswered, frame.Frame{
			Type: frame.TypePropertyGetResponse, RequestID: f.RequestID, Services: d.s.services,
		})
	}
	return nil
}

// forget ends the wait for the ack of seq and returns when it was sent.
func (d *device) forget(seq uint32) (time.Duration, bool) {
	sent, ok := d.win.remove(seq)
	if ok {
		d.s.settle(1)
	}
	return sent, ok
}

func (d *device) answer(counter *atomic.Int64, f frame.Frame) error {
	if err := d.c.Send(f); err != nil {
		return err
	}
	d.s.st.framesOut.Add(1)
	counter.Add(1)
	return nil
}

// window tracks the reports of one device that wait for an ack: their seq
// and when they were sent. It is shared by the device's sender and
// receiver.
type window struct {
	// mu guards the following fields.
	mu    sync.Mutex
	last  uint32
	n     int
	slots []slot
}

type slot struct {
	seq  uint32 // 0 = free
	sent time.Duration
}

func newWindow(size int) *window { return &window{slots: make([]slot, size)} }

// add takes the next seq (never 0) for a report sent at sent; it fails
// when every slot is in use.
func (w *window) add(sent time.Duration) (uint32, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.n == len(w.slots) {
		return 0, false
	}
	w.last++
	if w.last == 0 {
		w.last = 1
	}
	for i := range w.slots {
		if w.slots[i].seq == 0 {
			w.slots[i] = slot{seq: w.last, sent: sent}
			w.n++
			return w.last, true
		}
	}
	return 0, false
}

// remove frees seq and returns when it was sent.
func (w *window) remove(seq uint32) (time.Duration, bool) {
	if seq == 0 {
		return 0, false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for i := range w.slots {
		if w.slots[i].seq == seq {
			sent := w.slots[i].sent
			w.slots[i] = slot{}
			w.n--
			return sent, true
		}
	}
	return 0, false
}

func (w *window) pending() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n
}
