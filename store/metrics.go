package store

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Label values of subgate_outbox_rejected_total{reason}.
const (
	reasonFull     = "full"
	reasonBusy     = "busy"
	reasonTooLarge = "too_large"
)

// metrics are the store's collectors. Labelled children are resolved once
// here, never per request (go-style §7).
type metrics struct {
	messages  prometheus.Gauge
	bytes     prometheus.Gauge
	oldestAge prometheus.GaugeFunc
	appended  prometheus.Counter
	acked     prometheus.Counter

	droppedVec *prometheus.CounterVec
	dropped    prometheus.Counter

	rejectedVec      *prometheus.CounterVec
	rejectedFull     prometheus.Counter
	rejectedBusy     prometheus.Counter
	rejectedTooLarge prometheus.Counter

	commitSeconds prometheus.Histogram
	commitOps     prometheus.Histogram
	commitErrors  prometheus.Counter
	queueDepth    prometheus.GaugeFunc
}

func newMetrics(s *Store) *metrics {
	m := &metrics{
		messages: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "subgate_outbox_messages",
			Help: "Uplink items in the durable outbox waiting for the platform's PUBACK.",
		}),
		bytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "subgate_outbox_bytes",
			Help: "Payload bytes in the durable outbox.",
		}),
		oldestAge: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "subgate_outbox_oldest_age_seconds",
			Help: "Age of the oldest item in the outbox, 0 when it is empty.",
		}, s.oldestAge),
		appended: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "subgate_outbox_appended_total",
			Help: "Items committed to the outbox.",
		}),
		acked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "subgate_outbox_acked_total",
			Help: "Items removed from the outbox after the platform acknowledged them.",
		}),
		droppedVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "subgate_outbox_dropped_total",
			Help: "Items deleted unsent from a full outbox, by overflow policy.",
		}, []string{"policy"}),
		rejectedVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "subgate_outbox_rejected_total",
			Help: "Append requests refused, by reason: full (outbox bound), busy (write queue bound), too_large (item bound).",
		}, []string{"reason"}),
		commitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "subgate_store_commit_seconds",
			Help:    "Duration of one write transaction, including fsync.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		commitOps: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "subgate_store_commit_ops",
			Help:    "Write requests grouped into one transaction.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 14),
		}),
		commitErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "subgate_store_commit_errors_total",
			Help: "Write transactions that failed to commit.",
		}),
		queueDepth: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "subgate_store_queue_depth",
			Help: "Write requests waiting for the writer.",
		}, func() float64 { return float64(len(s.queue)) }),
	}
	m.dropped = m.droppedVec.WithLabelValues(OverflowDropOldest)
	m.rejectedFull = m.rejectedVec.WithLabelValues(reasonFull)
	m.rejectedBusy = m.rejectedVec.WithLabelValues(reasonBusy)
	m.rejectedTooLarge = m.rejectedVec.WithLabelValues(reasonTooLarge)
	return m
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{
		m.messages, m.bytes, m.oldestAge, m.appended, m.acked, m.droppedVec,
		m.rejectedVec, m.commitSeconds, m.commitOps, m.commitErrors, m.queueDepth,
	}
}

// register adds every collector to reg, or none of them.
func (m *metrics) register(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	cs := m.collectors()
	for i, c := range cs {
		if err := reg.Register(c); err != nil {
			for _, done := range cs[:i] {
				reg.Unregister(done)
			}
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return fmt.Errorf("store: metrics already registered (a second store on one registry?): %w", err)
			}
			return fmt.Errorf("store: register metrics: %w", err)
		}
	}
	return nil
}

func (m *metrics) unregister(reg prometheus.Registerer) {
	if reg == nil {
		return
	}
	for _, c := range m.collectors() {
		reg.Unregister(c)
	}
}
