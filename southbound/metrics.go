package southbound

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/subgate/subgate/southbound/frame"
)

// closeReason says why a connection closed: the reason label of
// subgate_southbound_disconnects_total and the error given to Logout.
type closeReason uint32

const (
	rNone closeReason = iota
	rPeer
	rIdle
	rKicked
	rSlowReader
	rBadFrames
	rTooLarge
	rRateLimited
	rShutdown
	rError
	rRejected
	numReasons
)

var reasonLabels = [numReasons]string{
	rNone: "none", rPeer: "peer", rIdle: "idle", rKicked: "kicked", rSlowReader: "slow_reader",
	rBadFrames: "bad_frames", rTooLarge: "too_large", rRateLimited: "rate_limited",
	rShutdown: "shutdown", rError: "error", rRejected: "rejected",
}

var reasonErrs = [numReasons]error{
	rNone: ErrConnFailed, rPeer: ErrPeerClosed, rIdle: ErrIdle, rKicked: ErrKicked,
	rSlowReader: ErrSlowReaderClosed, rBadFrames: ErrBadFrames, rTooLarge: ErrTooLarge,
	rRateLimited: ErrRateLimited, rShutdown: ErrShutdown, rError: ErrConnFailed, rRejected: ErrRejected,
}

func (r closeReason) String() string {
	if r < numReasons {
		return reasonLabels[r]
	}
	return "unknown"
}

func (r closeReason) err() error {
	if r < numReasons {
		return reasonErrs[r]
	}
	return ErrConnFailed
}

// rejectReason is the reason label of subgate_southbound_rejects_total.
type rejectReason uint8

const (
	rjMaxConns rejectReason = iota
	rjMaxConnsPerIP
	rjAuthFailed
	rjNotAllowed
	rjDuplicate
	rjHelloTimeout
	rjBadHello
	rjRefused
	numRejects
)

var rejectLabels = [numRejects]string{
	rjMaxConns: "max_conns", rjMaxConnsPerIP: "max_conns_per_ip", rjAuthFailed: "auth_failed",
	rjNotAllowed: "not_allowed", rjDuplicate: "duplicate", rjHelloTimeout: "hello_timeout",
	rjBadHello: "bad_hello", rjRefused: "refused",
}

// limit is the limit label of subgate_southbound_limit_hits_total.
type limit uint8

const (
	lMaxConns limit = iota
	lMaxConnsPerIP
	lMaxFrame
	lRate
	lWorkerQueue
	lOutbound
	lHelloTimeout
	lIdleTimeout
	numLimits
)

var limitLabels = [numLimits]string{
	lMaxConns: "max_conns", lMaxConnsPerIP: "max_conns_per_ip", lMaxFrame: "max_frame", lRate: "rate",
	lWorkerQueue: "worker_queue", lOutbound: "outbound", lHelloTimeout: "hello_timeout", lIdleTimeout: "idle_timeout",
}

// maxCode bounds the error codes that get their own decode_errors child;
// others count under "other".
const maxCode = 64

// metrics holds every collector of the package, with each labelled child
// resolved once here: the hot paths only index arrays.
type metrics struct {
	connections  prometheus.Gauge
	sessions     prometheus.Gauge
	accepts      prometheus.Counter
	rejects      [numRejects]prometheus.Counter
	disconnects  [numReasons]prometheus.Counter
	framesIn     []prometheus.Counter // indexed by frame.Type; last = other
	framesOut    []prometheus.Counter
	bytesIn      prometheus.Counter
	bytesOut     prometheus.Counter
	decodeErrors [maxCode + 1]prometheus.Counter // last = other
	limitHits    [numLimits]prometheus.Counter
	queueDepth   prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	const ns, sub = "subgate", "southbound"
	m := &metrics{
		connections: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "connections", Help: "Open device connections."}),
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "sessions", Help: "Device connections logged in."}),
		accepts: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "accepts_total", Help: "Device connections accepted."}),
		bytesIn: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "bytes_in_total", Help: "Bytes decoded from devices."}),
		bytesOut: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "bytes_out_total", Help: "Bytes written to devices."}),
		queueDepth: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "worker_queue_depth", Help: "Items waiting in the worker queues."}),
	}
	rejects := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
		Name: "rejects_total", Help: "Connections or logins refused, by reason."}, []string{"reason"})
	disconnects := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
		Name: "disconnects_total", Help: "Connections closed, by reason."}, []string{"reason"})
	framesIn := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
		Name: "frames_in_total", Help: "Frames decoded from devices, by type."}, []string{"type"})
	framesOut := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
		Name: "frames_out_total", Help: "Frames sent to devices, by type."}, []string{"type"})
	decodeErrors := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
		Name: "decode_errors_total", Help: "Bad input from devices, by error code."}, []string{"code"})
	limitHits := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
		Name: "limit_hits_total", Help: "Times a configured bound was hit, by limit."}, []string{"limit"})

	for i := range m.rejects {
		m.rejects[i] = rejects.WithLabelValues(rejectLabels[i])
	}
	for i := range m.disconnects {
		if closeReason(i) != rNone {
			m.disconnects[i] = disconnects.WithLabelValues(reasonLabels[i])
		}
	}
	m.disconnects[rNone] = m.disconnects[rError]
	types := frame.Types()
	n := 0
	for _, t := range types {
		n = max(n, int(t)+1)
	}
	m.framesIn = make([]prometheus.Counter, n+1)
	m.framesOut = make([]prometheus.Counter, n+1)
	m.framesIn[n] = framesIn.WithLabelValues("other")
	m.framesOut[n] = framesOut.WithLabelValues("other")
	for i := range n {
		m.framesIn[i], m.framesOut[i] = m.framesIn[n], m.framesOut[n]
	}
	for _, t := range types {
		m.framesIn[t] = framesIn.WithLabelValues(t.String())
		m.framesOut[t] = framesOut.WithLabelValues(t.String())
	}
	other := decodeErrors.WithLabelValues("other")
	for i := range m.decodeErrors {
		m.decodeErrors[i] = other
		if i == maxCode {
			continue
		}
		if name := frame.ErrorCode(i).String(); i > 0 && !strings.HasPrefix(name, "code(") {
			m.decodeErrors[i] = decodeErrors.WithLabelValues(name)
		}
	}
	for i := range m.limitHits {
		m.limitHits[i] = limitHits.WithLabelValues(limitLabels[i])
	}

	if reg != nil {
		for _, c := range []prometheus.Collector{m.connections, m.sessions, m.accepts, rejects, disconnects,
			framesIn, framesOut, m.bytesIn, m.bytesOut, decodeErrors, limitHits, m.queueDepth} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

func (m *metrics) frameIn(t frame.Type) {
	if int(t) < len(m.framesIn) {
		m.framesIn[t].Inc()
		return
	}
	m.framesIn[len(m.framesIn)-1].Inc()
}

func (m *metrics) frameOut(t frame.Type) {
	if int(t) < len(m.framesOut) {
		m.framesOut[t].Inc()
		return
	}
	m.framesOut[len(m.framesOut)-1].Inc()
}

func (m *metrics) decodeError(c frame.ErrorCode) {
	if int(c) < maxCode {
		m.decodeErrors[c].Inc()
		return
	}
	m.decodeErrors[maxCode].Inc()
}
