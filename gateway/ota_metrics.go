package gateway

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/subgate/subgate/gateway/admin"
)

// otaMetrics are the OTA manager's collectors. Label values are fixed
// sets (states, result codes, drop reasons): never device ids.
type otaMetrics struct {
	jobs       *prometheus.GaugeVec
	jobsBy     map[string]prometheus.Gauge
	downloaded prometheus.Counter
	downloads  *prometheus.CounterVec
	pushed     prometheus.Counter
	results    *prometheus.CounterVec
	cacheBytes prometheus.Gauge
	dropped    *prometheus.CounterVec
}

func newOTAMetrics(reg prometheus.Registerer) *otaMetrics {
	m := &otaMetrics{
		jobs: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "subgate_ota_jobs",
			Help: "Sub-device OTA jobs by state.",
		}, []string{"state"}),
		downloaded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "subgate_ota_downloaded_bytes_total",
			Help: "Package bytes received from package servers.",
		}),
		downloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "subgate_ota_downloads_total",
			Help: "Package downloads by outcome (ok, cached, failed).",
		}, []string{"result"}),
		pushed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "subgate_ota_pushed_bytes_total",
			Help: "Package bytes sent to devices in ota_chunk frames, resends included.",
		}),
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "subgate_ota_results_total",
			Help: "Finished OTA jobs by iotda-protocol §4.5 result code.",
		}, []string{"result"}),
		cacheBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "subgate_ota_cache_bytes",
			Help: "Bytes of complete and partial packages in the OTA cache.",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "subgate_ota_dropped_total",
			Help: "OTA inputs refused because a bound was hit, by reason.",
		}, []string{"reason"}),
	}
	m.jobsBy = make(map[string]prometheus.Gauge, len(admin.OTAStates))
	for _, s := range admin.OTAStates {
		m.jobsBy[s] = m.jobs.WithLabelValues(s)
	}
	for _, r := range []string{"ok", "cached", "failed"} {
		m.downloads.WithLabelValues(r)
	}
	for _, r := range []string{otaDropEvents, otaDropFrames, otaDropConns, otaDropJobs, otaDropReports, otaDropPersist} {
		m.dropped.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.jobs, m.downloaded, m.downloads, m.pushed, m.results, m.cacheBytes, m.dropped)
	}
	return m
}

// Reasons of subgate_ota_dropped_total.
const (
	otaDropEvents  = "event_queue_full"
	otaDropFrames  = "frame_queue_full"
	otaDropConns   = "conn_queue_full"
	otaDropJobs    = "max_jobs"
	otaDropReports = "report_queue_full"
	otaDropPersist = "store_busy"
)
