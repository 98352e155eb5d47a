package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"math/bits"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/subgate/subgate/southbound/frame"
)

// errKind is a kind of failure counted in the summary (error_kinds).
type errKind int

// Failure kinds. Refused handshakes and error frames after login are
// counted per error code instead (refused_<code>, error_<code>).
const (
	kindDial         errKind = iota // TCP connect failed
	kindHelloTimeout                // no welcome within -connect-timeout
	kindHello                       // handshake broken without an error frame (EOF, garbage)
	kindClosed                      // the gateway closed a logged-in connection
	kindSend                        // a write failed
	kindDecode                      // the gateway sent a frame the codec rejects
	kindStrayAck                    // an ack for no report in flight
	kindDemoRefused                 // demo: the reply to the first message was "error: ..."
	kindDemoError                   // demo: an "error: ..." line after the login
	numKinds
)

var kindNames = [numKinds]string{
	kindDial:         "dial",
	kindHelloTimeout: "hello_timeout",
	kindHello:        "hello",
	kindClosed:       "closed",
	kindSend:         "send",
	kindDecode:       "decode",
	kindStrayAck:     "stray_ack",
	kindDemoRefused:  "refused_demo",
	kindDemoError:    "demo_error",
}

// codeSlots bounds the per-code counters; codes at or above the last slot
// share it.
const codeSlots = 32

func codeSlot(c frame.ErrorCode) int { return min(int(c), codeSlots-1) }

func slotName(i int) string {
	if i == codeSlots-1 {
		return "other"
	}
	return frame.ErrorCode(i).String()
}

// stats are the run's counters. Every field is updated atomically from the
// device goroutines and read by the reporter and the final summary.
type stats struct {
	connected atomic.Int64 // handshakes that succeeded
	failed    atomic.Int64 // handshakes that failed (not those cut by shutdown)
	online    atomic.Int64 // connections logged in now
	// lastConnect is when the latest successful handshake ended, in
	// nanoseconds since the start of the run.
	lastConnect atomic.Int64

	framesOut     atomic.Int64
	framesIn      atomic.Int64
	acks          atomic.Int64
	unacked       atomic.Int64 // reports still waiting for an ack when their device closed
	skipped       atomic.Int64 // reports not sent because the ack window was full
	cmdsAnswered  atomic.Int64
	propsAnswered atomic.Int64 // property set and get answered

	kinds   [numKinds]atomic.Int64
	refused [codeSlots]atomic.Int64 // error frames that ended a handshake
	downErr [codeSlots]atomic.Int64 // error frames after login

	ackLatency histogram
}

func (s *stats) fail(k errKind) {
	s.failed.Add(1)
	s.kinds[k].Add(1)
}

func (s *stats) refuse(c frame.ErrorCode) {
	s.failed.Add(1)
	s.refused[codeSlot(c)].Add(1)
}

func (s *stats) noteConnect(at time.Duration) {
	for {
		old := s.lastConnect.Load()
		if int64(at) <= old || s.lastConnect.CompareAndSwap(old, int64(at)) {
			return
		}
	}
}

// histogram is a lock-free latency histogram with logarithmic buckets:
// values below histLinear nanoseconds have a bucket each, and every power
// of two above is split into histSub buckets, so a bucket's width is at
// most 1/histSub (12.5%) of its values. It needs no allocation and no
// sample storage, whatever the number of observations.
type histogram struct {
	counts [histBuckets]atomic.Int64
	n      atomic.Int64
	max    atomic.Int64
}

const (
	histSubBits = 3
	histSub     = 1 << histSubBits
	histLinear  = 2 * histSub
	// histBuckets covers every non-negative int64: a value of b bits
	// (b > histSubBits+1) is shifted right by b-histSubBits-1.
	histBuckets = histLinear + (64-histSubBits-1)*histSub
)

func bucketOf(v uint64) int {
	if v < histLinear {
		return int(v)
	}
	shift := bits.Len64(v) - histSubBits - 1
	top := v >> shift // in [histSub, 2*histSub)
	return histLinear + (shift-1)*histSub + int(top-histSub)
}

// bucketUpper is the largest value that falls in bucket i.
func bucketUpper(i int) uint64 {
	if i < histLinear {
		return uint64(i)
	}
	k := i - histLinear
	shift := k/histSub + 1
	top := uint64(k%histSub + histSub)
	return (top+1)<<shift - 1
}

// observe records one duration; negative durations count as zero.
func (h *histogram) observe(d time.Duration) {
	v := max(int64(d), 0)
	h.counts[bucketOf(uint64(v))].Add(1)
	h.n.Add(1)
	for {
		old := h.max.Load()
		if v <= old || h.max.CompareAndSwap(old, v) {
			return
		}
	}
}

// quantile returns an upper bound of the q-quantile (0 < q <= 1): the top
// of the bucket holding it, never above the largest value seen. It returns
// 0 when nothing was observed.
func (h *histogram) quantile(q float64) time.Duration {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	rank := max(int64(math.Ceil(q*float64(n))), 1)
	var cum int64
	for i := range h.counts {
		cum += h.counts[i].Load()
		if cum >= rank {
			return time.Duration(min(bucketUpper(i), uint64(h.max.Load())))
		}
	}
	// Observations landed between the loads of n and the buckets.
	return time.Duration(h.max.Load())
}

// Summary is the result of a run, printed as one line or as JSON. Errors
// counts every failure and every error frame from the gateway; Busy is the
// part of it that are busy error frames, and ErrorKinds splits it by kind.
type Summary struct {
	Phase         string           `json:"phase"`
	Devices       int              `json:"devices"`
	Connected     int64            `json:"connected"`
	Failed        int64            `json:"failed"`
	Online        int64            `json:"online"`
	ConnectRate   float64          `json:"connect_rate"`
	FramesOut     int64            `json:"frames_out"`
	FramesIn      int64            `json:"frames_in"`
	Acks          int64            `json:"acks"`
	Unacked       int64            `json:"unacked"`
	Skipped       int64            `json:"skipped"`
	Errors        int64            `json:"errors"`
	Busy          int64            `json:"busy"`
	ErrorKinds    map[string]int64 `json:"error_kinds,omitempty"`
	AckP50MS      float64          `json:"ack_p50_ms"`
	AckP90MS      float64          `json:"ack_p90_ms"`
	AckP99MS      float64          `json:"ack_p99_ms"`
	AckMaxMS      float64          `json:"ack_max_ms"`
	CmdsAnswered  int64            `json:"cmds_answered"`
	PropsAnswered int64            `json:"props_answered"`
	ElapsedSec    float64          `json:"elapsed_s"`
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// summarize reads the counters. elapsed is the time since the start.
func (s *stats) summarize(phase string, devices int, elapsed time.Duration) Summary {
	sum := Summary{
		Phase:         phase,
		Devices:       devices,
		Connected:     s.connected.Load(),
		Failed:        s.failed.Load(),
		Online:        s.online.Load(),
		FramesOut:     s.framesOut.Load(),
		FramesIn:      s.framesIn.Load(),
		Acks:          s.acks.Load(),
		Unacked:       s.unacked.Load(),
		Skipped:       s.skipped.Load(),
		Busy:          s.downErr[frame.CodeBusy].Load(),
		AckP50MS:      ms(s.ackLatency.quantile(0.50)),
		AckP90MS:      ms(s.ackLatency.quantile(0.90)),
		AckP99MS:      ms(s.ackLatency.quantile(0.99)),
		AckMaxMS:      ms(time.Duration(s.ackLatency.max.Load())),
		CmdsAnswered:  s.cmdsAnswered.Load(),
		PropsAnswered: s.propsAnswered.Load(),
		ElapsedSec:    elapsed.Seconds(),
	}
	// The connect rate is over the connecting phase: up to the last
	// successful handshake, or up to now while devices are still coming.
	window := time.Duration(s.lastConnect.Load())
	if phase == phaseConnecting {
		window = elapsed
	}
	if window > 0 {
		sum.ConnectRate = float64(sum.Connected) / window.Seconds()
	}
	add := func(name string, n int64) {
		if n == 0 {
			return
		}
		if sum.ErrorKinds == nil {
			sum.ErrorKinds = make(map[string]int64)
		}
		sum.ErrorKinds[name] += n
		sum.Errors += n
	}
	for k := range numKinds {
		add(kindNames[k], s.kinds[k].Load())
	}
	for i := range codeSlots {
		add("refused_"+slotName(i), s.refused[i].Load())
		add("error_"+slotName(i), s.downErr[i].Load())
	}
	return sum
}

// Line formats s as one grep-able line of key=value pairs. Progress lines
// carry "progress phase=<phase>"; the final line has neither.
func (s Summary) Line() string {
	var b strings.Builder
	b.WriteString("devicesim:")
	if s.Phase != phaseDone {
		b.WriteString(" progress phase=")
		b.WriteString(s.Phase)
	}
	fmt.Fprintf(&b, " connected=%d/%d failed=%d online=%d connect_rate=%.0f/s", s.Connected, s.Devices, s.Failed, s.Online, s.ConnectRate)
	fmt.Fprintf(&b, " frames_out=%d frames_in=%d acks=%d unacked=%d skipped=%d errors=%d busy=%d",
		s.FramesOut, s.FramesIn, s.Acks, s.Unacked, s.Skipped, s.Errors, s.Busy)
	if s.Acks > 0 {
		fmt.Fprintf(&b, " ack_p50=%s ack_p90=%s ack_p99=%s ack_max=%s",
			fmtMS(s.AckP50MS), fmtMS(s.AckP90MS), fmtMS(s.AckP99MS), fmtMS(s.AckMaxMS))
	} else {
		b.WriteString(" ack_p50=- ack_p90=- ack_p99=- ack_max=-")
	}
	fmt.Fprintf(&b, " cmds_answered=%d props_answered=%d elapsed=%s", s.CmdsAnswered, s.PropsAnswered,
		time.Duration(s.ElapsedSec*float64(time.Second)).Round(time.Millisecond))
	for _, k := range slices.Sorted(maps.Keys(s.ErrorKinds)) {
		fmt.Fprintf(&b, " err_%s=%d", k, s.ErrorKinds[k])
	}
	return b.String()
}

// JSON returns s as one line of JSON.
func (s Summary) JSON() ([]byte, error) { return json.Marshal(s) }

// fmtMS prints milliseconds with three significant digits and a unit.
func fmtMS(v float64) string {
	switch {
	case v >= 1000:
		return strconv.FormatFloat(v/1000, 'f', 2, 64) + "s"
	case v >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64) + "ms"
	}
	return strconv.FormatFloat(v*1000, 'f', 0, 64) + "us"
}
