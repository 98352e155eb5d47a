package main

// Flood mode (-flood): attackers that misbehave in the ways a gateway must
// survive (issue 3: connect churn, oversize frames, garbage bytes, slow
// readers, half-open sockets, wrong token proofs), run next to the
// well-behaved devices of the same process, or alone with -n 0. Each kind
// has -flood-n attackers; every attacker loops "open a connection,
// misbehave, see what the gateway answers" until -flood-duration ends, and
// all attackers together open at most -flood-rate connections per second.
// The summary counts, per kind, the error frames the gateway sent (by code,
// docs/device-protocol.md §7) and whether the gateway closed the connection.
//
// Goroutines: one per attacker, each waited for by flood.run; a connection
// is unblocked at the end of the flood by context.AfterFunc, which moves
// its deadlines into the past.

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	mrand "math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/subgate/subgate/southbound/frame"
	"github.com/subgate/subgate/subdevice"
)

// floodKind is one way of misbehaving.
type floodKind int

const (
	// floodChurn connects, says hello, waits for the answer and closes, in
	// a loop.
	floodChurn floodKind = iota
	// floodOversize sends one frame of -flood-size bytes, above the
	// gateway's max_frame, before any hello.
	floodOversize
	// floodGarbage sends -flood-size random bytes.
	floodGarbage
	// floodSlow logs in, then never reads again while it makes the gateway
	// write (it sends pings, each answered by a pong).
	floodSlow
	// floodHalfOpen connects and sends nothing, until the gateway closes.
	floodHalfOpen
	// floodBadAuth answers the token challenge with a proof made with a
	// wrong secret.
	floodBadAuth
	numFloodKinds
)

var floodKindNames = [numFloodKinds]string{
	floodChurn:    "churn",
	floodOversize: "oversize",
	floodGarbage:  "garbage",
	floodSlow:     "slow",
	floodHalfOpen: "halfopen",
	floodBadAuth:  "badauth",
}

func (k floodKind) String() string { return floodKindNames[k] }

// Bounds of the flood flags and of what one attacker sends.
const (
	maxFloodAttackers = 10_000   // per kind
	minFloodSize      = 64       // the smallest max_frame a gateway accepts
	maxFloodSize      = 64 << 20 // well above the largest max_frame (16 MiB)
	// floodChunk is the size of one write of oversize or garbage input.
	floodChunk = 16 << 10
	// maxSlowBytes bounds the pings one slow connection writes; after that
	// it holds the connection, still not reading, until the flood ends.
	maxSlowBytes = 64 << 20
	// slowReadBuffer is the socket receive buffer of a slow attacker, so
	// that the gateway's writes back up after a few KiB.
	slowReadBuffer = 4 << 10
	// pingBatch is the pings of one write of a slow attacker.
	pingBatch = 1024
	// floodReadChunk is the first read buffer of an attacker; it grows to
	// floodMaxDown for a larger frame from the gateway.
	floodReadChunk = 4 << 10
	floodMaxDown   = 1 << 20
)

// floodConfig is what the -flood flags say.
type floodConfig struct {
	Kinds    []floodKind
	N        int           // attackers per kind
	Rate     float64       // connections per second, all attackers together
	Duration time.Duration // how long the flood runs
	Size     int           // bytes of one oversize frame, and of garbage per connection
	Prefix   string        // attacker node ids: <Prefix><kind>-<i>
	// Sources are the attackers' source IPs, round robin (empty: the
	// devices' -src, or any).
	Sources []string
}

func (f *floodConfig) enabled() bool { return len(f.Kinds) > 0 }

// fds is the most descriptors the flood holds at once: every attacker has
// at most one connection open.
func (f *floodConfig) fds() uint64 { return uint64(f.N) * uint64(len(f.Kinds)) }

// nodeID is the node id of attacker i of kind k.
func (f *floodConfig) nodeID(k floodKind, i int) string {
	return f.Prefix + k.String() + "-" + strconv.Itoa(i)
}

// registerFloodFlags adds the -flood flags to fs.
func registerFloodFlags(fs *flag.FlagSet, f *floodConfig) {
	fs.Func("flood", "attack kinds, comma-separated: churn, oversize, garbage, slow, halfopen, badauth, or all (native codecs only)",
		func(s string) (err error) {
			f.Kinds, err = parseFloodKinds(s)
			return err
		})
	fs.IntVar(&f.N, "flood-n", 10, "attackers per -flood kind")
	fs.Float64Var(&f.Rate, "flood-rate", 50, "attack connections per second, all attackers together")
	fs.DurationVar(&f.Duration, "flood-duration", 30*time.Second, "how long the flood runs")
	fs.IntVar(&f.Size, "flood-size", 2*frame.DefaultMaxFrame, "bytes of an oversize frame (set above the gateway's max_frame) and of garbage per connection")
	fs.StringVar(&f.Prefix, "flood-prefix", "flood-", "attacker node ids: <prefix><kind>-<i>")
	fs.Func("flood-src", "attacker source IPs, like -src (empty: those of -src)", func(s string) (err error) {
		f.Sources, err = parseSources(s)
		return err
	})
}

// parseFloodKinds parses -flood: kind names separated by commas, or "all".
func parseFloodKinds(s string) ([]floodKind, error) {
	var kinds []floodKind
	for part := range strings.SplitSeq(s, ",") {
		name := strings.TrimSpace(part)
		if name == "all" {
			kinds = kinds[:0]
			for k := range numFloodKinds {
				kinds = append(kinds, k)
			}
			continue
		}
		k := slices.Index(floodKindNames[:], name)
		if k < 0 {
			return nil, usagef("-flood: unknown kind %q (want %s or all)", name, strings.Join(floodKindNames[:], ", "))
		}
		if !slices.Contains(kinds, floodKind(k)) {
			kinds = append(kinds, floodKind(k))
		}
	}
	if len(kinds) == 0 {
		return nil, usagef("-flood: no kind given")
	}
	return kinds, nil
}

// validate checks f; native says whether the device codec is a native one.
func (f *floodConfig) validate(native bool) error {
	if !f.enabled() {
		return nil
	}
	switch {
	case !native:
		// The attacks and the answers they draw are those of the native
		// session (hello, challenge, error frames).
		return usagef("-flood needs a native codec (jsonl or binary)")
	case f.N < 1 || f.N > maxFloodAttackers:
		return usagef("-flood-n must be in [1, %d], got %d", maxFloodAttackers, f.N)
	case !(f.Rate > 0) || f.Rate > maxConnectRate:
		return usagef("-flood-rate must be in (0, %d], got %v", maxConnectRate, f.Rate)
	case f.Duration <= 0:
		return usagef("-flood-duration must be positive")
	case f.Size < minFloodSize || f.Size > maxFloodSize:
		return usagef("-flood-size must be in [%d, %d], got %d", minFloodSize, maxFloodSize, f.Size)
	}
	for _, k := range f.Kinds {
		if err := subdevice.ValidateNodeID(f.nodeID(k, f.N-1)); err != nil {
			return usagef("-flood-prefix: %v", err)
		}
	}
	return nil
}

// floodStats are the counters of one kind, updated by its attackers.
type floodStats struct {
	attempts    atomic.Int64 // connections tried
	dialFailed  atomic.Int64
	welcomed    atomic.Int64 // logins the gateway accepted
	cut         atomic.Int64 // connections the gateway closed
	closed      atomic.Int64 // connections the attacker closed itself
	interrupted atomic.Int64 // connections still open when the flood ended
	bytesOut    atomic.Int64
	codes       [codeSlots]atomic.Int64 // error frames received, by code
}

// FloodSummary is what the attackers of one kind saw.
type FloodSummary struct {
	Kind        string           `json:"kind"`
	Attackers   int              `json:"attackers"`
	Attempts    int64            `json:"attempts"`
	DialFailed  int64            `json:"dial_failed"`
	Welcomed    int64            `json:"welcomed"`
	Cut         int64            `json:"cut"`
	Closed      int64            `json:"closed"`
	Interrupted int64            `json:"interrupted"`
	BytesOut    int64            `json:"bytes_out"`
	Errors      map[string]int64 `json:"errors,omitempty"`
}

// Line formats s as one grep-able line: cut counts connections the
// gateway closed, closed those the attacker closed, interrupted those the
// end of the flood closed; err_<code> counts error frames received.
func (s FloodSummary) Line() string {
	var b strings.Builder
	fmt.Fprintf(&b, "devicesim-flood: kind=%s attackers=%d attempts=%d dial_failed=%d welcomed=%d cut=%d closed=%d interrupted=%d bytes_out=%d",
		s.Kind, s.Attackers, s.Attempts, s.DialFailed, s.Welcomed, s.Cut, s.Closed, s.Interrupted, s.BytesOut)
	for _, k := range slices.Sorted(maps.Keys(s.Errors)) {
		fmt.Fprintf(&b, " err_%s=%d", k, s.Errors[k])
	}
	return b.String()
}

// flood is one run of the attackers. Create it with newFlood and call run
// once.
type flood struct {
	cfg     floodConfig
	addr    string
	codec   frame.Codec
	secret  func(node string) []byte // nil: no token proof
	timeout time.Duration            // bound on dial, handshake and drain
	pace    pacer
	st      [numFloodKinds]floodStats
	oversz  []byte // the first bytes of the oversize frame
	pings   []byte // pingBatch encoded pings
	// after, when set before run, is called on the attacker's goroutine
	// once the counters of each finished connection are updated (tests
	// wait on it).
	after func()
}

// newFlood prepares the flood of c, or returns nil when -flood is off.
func newFlood(c config) (*flood, error) {
	if !c.Flood.enabled() {
		return nil, nil
	}
	codec, err := frame.New(c.Codec, floodMaxDown)
	if err != nil {
		return nil, usagef("-codec: %v", err)
	}
	if err := c.Flood.validate(codec.Native()); err != nil {
		return nil, err
	}
	fc := c.Flood
	if len(fc.Sources) == 0 {
		fc.Sources = c.Sources
	}
	fl := &flood{
		cfg: fc, addr: c.Addr, codec: codec, timeout: c.ConnectTimeout,
		pace: pacer{b: newBucket(fc.Rate, max(1, min(int(fc.Rate), fc.N*len(fc.Kinds))), time.Now()), now: time.Now},
	}
	if c.Secret != nil {
		fl.secret = c.secretFor
	}
	fl.oversz = oversizeHead(c.Codec, fc.Size)
	ping, err := frame.New(c.Codec, 0)
	if err != nil {
		return nil, usagef("-codec: %v", err)
	}
	one, err := ping.AppendEncode(nil, frame.Frame{Type: frame.TypePing, Seq: 1})
	if err != nil {
		return nil, fmt.Errorf("devicesim: encode ping: %w", err)
	}
	fl.pings = make([]byte, 0, len(one)*pingBatch)
	for range pingBatch {
		fl.pings = append(fl.pings, one...)
	}
	return fl, nil
}

// oversizeHead is how an oversize frame of size bytes starts: a jsonl
// line that never ends within size bytes, or a binary header that
// declares a body of size-12 bytes. The rest is 'x' bytes.
func oversizeHead(codec string, size int) []byte {
	if codec == frame.NameBinary {
		h := make([]byte, frame.MaxHeaderLen)
		h[0], h[1], h[2] = frame.BinaryMagic, frame.Version, byte(frame.TypeMessage)
		binary.BigEndian.PutUint32(h[8:12], uint32(size-frame.MaxHeaderLen))
		return h
	}
	return []byte(`{"type":"message","content":"`)
}

// run starts the attackers and returns, once they all stopped, what they
// saw. The flood ends after -flood-duration or when ctx is done.
func (fl *flood) run(ctx context.Context) []FloodSummary {
	ctx, cancel := context.WithTimeout(ctx, fl.cfg.Duration)
	defer cancel()
	var wg sync.WaitGroup
	for _, k := range fl.cfg.Kinds {
		for i := range fl.cfg.N {
			wg.Go(func() { fl.attacker(ctx, k, i) })
		}
	}
	wg.Wait()
	return fl.summaries()
}

func (fl *flood) summaries() []FloodSummary {
	out := make([]FloodSummary, 0, len(fl.cfg.Kinds))
	for _, k := range fl.cfg.Kinds {
		st := &fl.st[k]
		s := FloodSummary{
			Kind: k.String(), Attackers: fl.cfg.N,
			Attempts: st.attempts.Load(), DialFailed: st.dialFailed.Load(), Welcomed: st.welcomed.Load(),
			Cut: st.cut.Load(), Closed: st.closed.Load(), Interrupted: st.interrupted.Load(), BytesOut: st.bytesOut.Load(),
		}
		for i := range codeSlots {
			if n := st.codes[i].Load(); n > 0 {
				if s.Errors == nil {
					s.Errors = make(map[string]int64)
				}
				s.Errors[slotName(i)] = n
			}
		}
		out = append(out, s)
	}
	return out
}

// attacker is the life of attacker i of kind k: one connection after the
// other, paced with the others by -flood-rate, until ctx is done.
func (fl *flood) attacker(ctx context.Context, k floodKind, i int) {
	for {
		if sleep(ctx, fl.pace.take()) != nil {
			return
		}
		fl.attempt(ctx, k, i)
	}
}

// attempt opens one connection and misbehaves on it.
func (fl *flood) attempt(ctx context.Context, k floodKind, i int) {
	st := &fl.st[k]
	st.attempts.Add(1)
	nc, err := fl.dial(ctx, i)
	if err != nil {
		if ctx.Err() == nil {
			st.dialFailed.Add(1)
		}
		return
	}
	c := &floodConn{nc: nc, codec: fl.codec, st: st, buf: make([]byte, floodReadChunk)}
	stop := context.AfterFunc(ctx, c.abort)
	node := fl.cfg.nodeID(k, i)
	switch k {
	case floodChurn:
		fl.login(c, node, fl.proof, fl.secret != nil)
	case floodOversize:
		fl.oversize(c)
	case floodGarbage:
		fl.garbage(c)
	case floodSlow:
		fl.slow(ctx, c, node)
	case floodHalfOpen:
		c.drain(time.Time{})
	case floodBadAuth:
		fl.login(c, node, wrongProof, true)
	}
	stop()
	_ = nc.Close()
	switch {
	case c.gone:
		st.cut.Add(1)
	case ctx.Err() != nil:
		st.interrupted.Add(1)
	default:
		st.closed.Add(1)
	}
	if fl.after != nil {
		fl.after()
	}
}

func (fl *flood) dial(ctx context.Context, i int) (net.Conn, error) {
	d := &net.Dialer{Timeout: fl.timeout}
	if n := len(fl.cfg.Sources); n > 0 {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(fl.cfg.Sources[i%n])}
	}
	return d.DialContext(ctx, "tcp", fl.addr)
}

// proof is the token proof of node for nonce with the configured secret
// ("" without one: the gateway then refuses a token login).
func (fl *flood) proof(node string, nonce []byte) string {
	if fl.secret == nil || nonce == nil {
		return ""
	}
	return frame.Proof(fl.secret(node), nonce, node)
}

// wrongProof signs nonce with a fresh random secret: well formed, wrong.
func wrongProof(node string, nonce []byte) string {
	var secret [32]byte
	_, _ = rand.Read(secret[:])
	if nonce == nil {
		// No challenge came (open auth): sign a made-up one.
		nonce = secret[16:]
	}
	return frame.Proof(secret[:16], nonce, node)
}

// login runs the hello handshake with the proof that sign makes, and
// reports whether the gateway welcomed the device. With challenge it first
// waits for the token challenge, at most the connect timeout (a gateway
// with open auth sends none; sign then gets a nil nonce).
func (fl *flood) login(c *floodConn, node string, sign func(node string, nonce []byte) string, challenge bool) bool {
	deadline := time.Now().Add(fl.timeout)
	var nonce []byte
	if challenge {
		f, err := c.recv(deadline)
		switch {
		case err == nil && f.Type == frame.TypeChallenge:
			nonce = f.Nonce
		case err == nil:
			// An error frame (counted) or something unexpected: over.
			c.drain(deadline)
			return false
		case c.gone || !isTimeout(err):
			return false
		}
		// A timeout: the gateway sends no challenge (open auth).
		deadline = time.Now().Add(fl.timeout)
	}
	hello := frame.Frame{Type: frame.TypeHello, NodeID: node, Proof: sign(node, nonce)}
	b, err := fl.codec.AppendEncode(nil, hello)
	if err != nil || c.write(b, deadline) != nil {
		return false
	}
	for {
		f, err := c.recv(deadline)
		if err != nil {
			return false
		}
		switch f.Type {
		case frame.TypeWelcome:
			c.st.welcomed.Add(1)
			return true
		case frame.TypeError:
			c.drain(deadline)
			return false
		}
	}
}

// oversize writes one frame of -flood-size bytes and reads the answer.
func (fl *flood) oversize(c *floodConn) {
	deadline := time.Now().Add(fl.timeout)
	if c.write(fl.oversz, deadline) != nil {
		c.drain(deadline)
		return
	}
	fill := make([]byte, floodChunk)
	for i := range fill {
		fill[i] = 'x'
	}
	for left := fl.cfg.Size - len(fl.oversz); left > 0; left -= len(fill) {
		if c.write(fill[:min(left, len(fill))], deadline) != nil {
			break
		}
	}
	// Even after a failed write: the error frame may wait in the socket.
	c.drain(deadline)
}

// garbage writes -flood-size random bytes, or fewer if the gateway closes
// the connection first, then reads the answer. A gateway that takes them
// all without closing shows in the summary as closed rather than cut.
func (fl *flood) garbage(c *floodConn) {
	deadline := time.Now().Add(fl.timeout)
	var seed [32]byte
	_, _ = rand.Read(seed[:])
	src := mrand.NewChaCha8(seed)
	chunk := make([]byte, floodChunk)
	for left := fl.cfg.Size; left > 0; left -= len(chunk) {
		b := chunk[:min(left, len(chunk))]
		_, _ = src.Read(b)
		if c.write(b, deadline) != nil {
			break
		}
	}
	// Even after a failed write: the error frame may wait in the socket.
	c.drain(deadline)
}

// slow logs in, shrinks its receive buffer and never reads again, while it
// writes pings so that the gateway has pongs to send. It returns when the
// gateway cut it, or when the flood ends.
func (fl *flood) slow(ctx context.Context, c *floodConn, node string) {
	if tc, ok := c.nc.(*net.TCPConn); ok {
		_ = tc.SetReadBuffer(slowReadBuffer)
	}
	if !fl.login(c, node, fl.proof, fl.secret != nil) {
		return
	}
	for sent := 0; sent < maxSlowBytes; sent += len(fl.pings) {
		// No deadline but the end of the flood (abort).
		if c.write(fl.pings, time.Time{}) != nil {
			return
		}
	}
	<-ctx.Done()
}

// floodConn is one attacker connection, used by one goroutine (and by
// abort from the end of the flood).
type floodConn struct {
	nc    net.Conn
	codec frame.Codec
	st    *floodStats
	buf   []byte
	n     int  // bytes in buf
	gone  bool // the gateway closed the connection
	// aborted is set by abort before it moves the deadlines, so that a
	// deadline set after that cannot undo it.
	aborted atomic.Bool
}

// errAborted is returned by recv and write once the flood is over.
var errAborted = errors.New("devicesim: flood over")

// errFatalDown is returned by recv when the gateway's stream cannot be
// decoded any further.
var errFatalDown = errors.New("devicesim: undecodable stream from the gateway")

// abort unblocks reads and writes: the flood is over.
func (c *floodConn) abort() {
	c.aborted.Store(true)
	_ = c.nc.SetDeadline(time.Unix(1, 0))
}

// recv returns the next frame from the gateway, counting error frames. A
// zero deadline means none. It sets gone when the gateway closed.
func (c *floodConn) recv(deadline time.Time) (frame.Frame, error) {
	for {
		if c.n > 0 {
			f, used, err := c.codec.Decode(c.buf[:c.n], false)
			switch {
			case err == nil:
				f = f.Clone()
				c.n = copy(c.buf, c.buf[used:c.n])
				if f.Type == frame.TypeError {
					c.st.codes[codeSlot(f.Code)].Add(1)
				}
				return f, nil
			case errors.Is(err, frame.ErrIncomplete):
			default:
				var fe *frame.Error
				if !errors.As(err, &fe) || fe.Fatal || used <= 0 || used > c.n {
					return frame.Frame{}, errFatalDown
				}
				c.n = copy(c.buf, c.buf[used:c.n])
				continue
			}
		}
		if c.n == len(c.buf) {
			if len(c.buf) >= floodMaxDown {
				return frame.Frame{}, errFatalDown
			}
			c.buf = append(c.buf, make([]byte, len(c.buf))...)
		}
		if err := c.nc.SetReadDeadline(deadline); err != nil {
			return frame.Frame{}, err
		}
		if c.aborted.Load() {
			return frame.Frame{}, errAborted
		}
		n, err := c.nc.Read(c.buf[c.n:])
		c.n += n
		if err != nil && n == 0 {
			if isGone(err) {
				c.gone = true
			}
			return frame.Frame{}, err
		}
	}
}

// drain receives until the gateway closes the connection or the deadline
// passes (zero: until the flood ends).
func (c *floodConn) drain(deadline time.Time) {
	for {
		if _, err := c.recv(deadline); err != nil {
			return
		}
	}
}

// write writes b whole; a zero deadline means none.
func (c *floodConn) write(b []byte, deadline time.Time) error {
	if err := c.nc.SetWriteDeadline(deadline); err != nil {
		return err
	}
	if c.aborted.Load() {
		return errAborted
	}
	n, err := c.nc.Write(b)
	c.st.bytesOut.Add(int64(n))
	if err != nil && isGone(err) {
		c.gone = true
	}
	return err
}

// isGone reports whether err means the peer closed the connection.
func isGone(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.ECONNABORTED)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// pacer is a bucket shared by the attackers.
type pacer struct {
	// mu guards b.
	mu  sync.Mutex
	b   *bucket
	now func() time.Time
}

// take returns how long the caller waits before its next connection.
func (p *pacer) take() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.b.take(p.now())
}

// printFlood writes the flood's summary: one line per kind, or one JSON
// object {"flood": [...]}.
func printFlood(w io.Writer, sums []FloodSummary, asJSON bool) error {
	if asJSON {
		b, err := json.Marshal(struct {
			Flood []FloodSummary `json:"flood"`
		}{sums})
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	for _, s := range sums {
		if _, err := fmt.Fprintln(w, s.Line()); err != nil {
			return err
		}
	}
	return nil
}
