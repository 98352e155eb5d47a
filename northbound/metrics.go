package northbound

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type sessionMetrics struct {
	connected       prometheus.Gauge
	connectsOK      prometheus.Counter
	connectsAuth    prometheus.Counter
	connectsErr     prometheus.Counter
	disconnects     *prometheus.CounterVec
	publishes       *prometheus.CounterVec
	puback          prometheus.Histogram
	downlink        prometheus.Counter
	downlinkDropped prometheus.Counter
}

func newSessionMetrics(reg prometheus.Registerer) *sessionMetrics {
	connects := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "subgate_northbound_connects_total",
		Help: "MQTT connect attempts by result (ok, bad_credentials, error).",
	}, []string{"result"})
	m := &sessionMetrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "subgate_northbound_connected",
			Help: "1 while the MQTT session to the platform is up.",
		}),
		connectsOK:   connects.WithLabelValues("ok"),
		connectsAuth: connects.WithLabelValues("bad_credentials"),
		connectsErr:  connects.WithLabelValues("error"),
		disconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "subgate_northbound_disconnects_total",
			Help: "MQTT disconnects by reason (lost, shutdown).",
		}, []string{"reason"}),
		publishes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "subgate_northbound_publishes_total",
			Help: "QoS 1 publishes by kind and result (ok, error).",
		}, []string{"kind", "result"}),
		puback: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "subgate_northbound_puback_seconds",
			Help:    "Time from publish to PUBACK.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2.5, 12),
		}),
		downlink: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "subgate_northbound_downlink_total",
			Help: "Downlink messages received from the platform.",
		}),
		downlinkDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "subgate_northbound_downlink_dropped_total",
			Help: "Downlink messages dropped because the downlink queue was full.",
		}),
	}
	m.disconnects.WithLabelValues("lost")
	m.disconnects.WithLabelValues("shutdown")
	if reg != nil {
		reg.MustRegister(m.connected, connects, m.disconnects, m.publishes, m.puback, m.downlink, m.downlinkDropped)
	}
	return m
}

func (m *sessionMetrics) connects(err error) {
	switch {
	case err == nil:
		m.connectsOK.Inc()
	case errors.Is(err, ErrBadCredentials):
		m.connectsAuth.Inc()
	default:
		m.connectsErr.Inc()
	}
}

func (m *sessionMetrics) disconnect(reason string) { m.disconnects.WithLabelValues(reason).Inc() }

func (m *sessionMetrics) published(kind string, err error, d time.Duration) {
	if err != nil {
		m.publishes.WithLabelValues(kind, "error").Inc()
		return
	}
	m.publishes.WithLabelValues(kind, "ok").Inc()
	m.puback.Observe(d.Seconds())
}
