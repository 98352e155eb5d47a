package gateway

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/subgate/subgate/subdevice"
)

type gwMetrics struct {
	logins         *prometheus.CounterVec
	upAccepted     *prometheus.CounterVec
	upRejected     *prometheus.CounterVec
	upPublished    prometheus.Counter
	packing        prometheus.Histogram
	quotaTokens    prometheus.Gauge
	quotaWait      *prometheus.HistogramVec
	controlDropped *prometheus.CounterVec
	downlink       *prometheus.CounterVec
	roundtrip      *prometheus.HistogramVec
	lateAnswers    prometheus.Counter
	limitHits      *prometheus.CounterVec
	statusReports  prometheus.Counter
	statusEntries  prometheus.Counter
	statusFailed   prometheus.Counter
	adds           *prometheus.CounterVec
	deletes        *prometheus.CounterVec
	notifications  *prometheus.CounterVec
	timeOffset     prometheus.Gauge
	sendErrors     prometheus.Counter
	persistDropped prometheus.Counter
	coalesced      prometheus.Counter
}

func newGatewayMetrics(reg prometheus.Registerer, g *Gateway) *gwMetrics {
	m := &gwMetrics{
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "subgate_subdevice_logins_total",
			Help: "Device logins by result (ok, pending registration, refused).",
		}, []string{"result"}),
		upAccepted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "subgate_uplink_accepted_total",
			Help: "Device data frames made durable in the outbox, by kind.",
		}, []string{"kind"}),
		upRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "subgate_uplink_rejected_total",
			Help: "Device data frames refused with a busy error, by reason.",
		}, []string{"reason"}),
		upPublished: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "subgate_uplink_published_total",
			Help: "Outbox items delivered to the platform (PUBACK seen).",
		}),
		packing: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "subgate_northbound_packing_ratio",
			Help:    "Sub-devices per uplink publish (batch property reports carry up to 100).",
			Buckets: []float64{1, 2, 5, 10, 20, 50, 80, 100},
		}),
		quotaTokens: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "subgate_northbound_quota_tokens",
			Help: "Publishes the quota governor could grant right now (free slots of the sliding one-second window).",
		}),
		quotaWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "subgate_northbound_quota_wait_seconds",
			Help:    "Time a publish waited for a quota permit, by priority class (responses should not wait; backlog replay does).",
			Buckets: []float64{0.001, 0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10},
		}, []string{"class"}),
		controlDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "subgate_northbound_control_dropped_total",
			Help: "Responses and management messages dropped because their queue was full, by class.",
		}, []string{"class"}),
		downlink: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "subgate_downlink_requests_total",
			Help: "Platform requests to sub-devices by kind and result.",
		}, []string{"kind", "result"}),
		roundtrip: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "subgate_downlink_roundtrip_seconds",
			Help:    "Time from a platform request to the device's answer, by kind.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"kind"}),
		lateAnswers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "subgate_downlink_late_answers_total",
			Help: "Device answers that came after their request timed out (dropped).",
		}),
		limitHits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "subgate_gateway_limit_hits_total",
			Help: "Gateway bounds hit, by limit.",
		}, []string{"limit"}),
		statusReports: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "subgate_subdevice_status_reports_total",
			Help: "sub_device_update_status messages delivered.",
		}),
		statusEntries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "subgate_subdevice_status_entries_total",
			Help: "Status entries delivered (each counts toward the platform's status TPS).",
		}),
		statusFailed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "subgate_subdevice_status_failed_total",
			Help: "Status entries the platform refused.",
		}),
		adds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "subgate_subdevice_adds_total",
			Help: "Gateway-side sub-device add requests by result (requested, ok, refused, timeout).",
		}, []string{"result"}),
		deletes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "subgate_subdevice_deletes_total",
			Help: "Gateway-side sub-device delete requests by result (requested, ok, refused).",
		}, []string{"result"}),
		notifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "subgate_subdevice_notifications_total",
			Help: "Platform add/delete notifications by type and result (applied, stale).",
		}, []string{"type", "result"}),
		timeOffset: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "subgate_time_offset_seconds",
			Help: "Platform time minus local time from the last $time_sync.",
		}),
		sendErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "subgate_southbound_send_errors_total",
			Help: "Frames to devices that could not be queued (closed or slow connection).",
		}),
		coalesced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "subgate_northbound_coalesced_total",
			Help: "Backlog property reports merged into a later report of the same device (northbound.coalesce).",
		}),
		persistDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "subgate_subdevice_persist_dropped_total",
			Help: "Connection bookkeeping updates not saved because the queue was full.",
		}),
	}
	subdevices := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "subgate_subdevices_total",
		Help: "Known sub-device records."}, func() float64 {
		if g.devs == nil {
			return 0
		}
		return float64(g.devs.Len())
	})
	byStatus := &statusCollector{g: g, desc: prometheus.NewDesc("subgate_subdevices",
		"Sub-device records by platform status.", []string{"status"}, nil)}
	pending := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "subgate_downlink_pending",
		Help: "Platform requests waiting for a device's answer."}, func() float64 {
		if g.corr == nil {
			return 0
		}
		return float64(g.corr.len())
	})
	regPending := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "subgate_subdevice_registrations_pending",
		Help: "Add requests waiting for the platform's answer."}, func() float64 {
		if g.regs == nil {
			return 0
		}
		return float64(g.regs.pendingCount())
	})
	statusPending := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "subgate_subdevice_status_pending",
		Help: "Status changes waiting to be reported (debounce and pacing)."}, func() float64 {
		if g.status == nil {
			return 0
		}
		return float64(g.status.pending())
	})
	for _, k := range []string{"command", "property_set", "property_get"} {
		m.roundtrip.WithLabelValues(k)
	}
	for _, c := range []string{"response", "management"} {
		m.controlDropped.WithLabelValues(c)
	}
	reg.MustRegister(m.logins, m.upAccepted, m.upRejected, m.upPublished, m.packing, m.quotaTokens, m.quotaWait,
		m.controlDropped, m.downlink, m.roundtrip, m.lateAnswers, m.limitHits, m.statusReports,
		m.statusEntries, m.statusFailed, m.adds, m.deletes, m.notifications, m.timeOffset, m.sendErrors,
		m.persistDropped, m.coalesced, subdevices, byStatus, pending, regPending, statusPending)
	return m
}

// statusCollector reports subgate_subdevices{status} at scrape time.
type statusCollector struct {
	g    *Gateway
	desc *prometheus.Desc
}

func (c *statusCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *statusCollector) Collect(ch chan<- prometheus.Metric) {
	counts := map[subdevice.Status]int{subdevice.Online: 0, subdevice.Offline: 0, subdevice.Inactive: 0}
	if c.g.devs != nil {
		counts = c.g.devs.CountByStatus()
	}
	for _, st := range []subdevice.Status{subdevice.Online, subdevice.Offline, subdevice.Inactive} {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(counts[st]), string(st))
	}
}
