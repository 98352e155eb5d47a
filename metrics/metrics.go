// Package metrics owns subgate's Prometheus registry and its /metrics HTTP
// handler.
//
// subgate never uses the global Prometheus registry. The process builds one
// registry with NewRegistry and injects it, as a prometheus.Registerer, into
// every component, which declares its own collectors in its own metrics.go
// under the Namespace prefix (metric names are subgate_<component>_<what>).
// No device id, node id, topic or secret is ever a label value: with 100k
// devices that would be a cardinality bomb.
//
// The registry and the handler are safe for concurrent use.
package metrics

import (
	"log/slog"
	"net/http"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every subgate metric name.
const Namespace = "subgate"

// Handler defaults.
const (
	// DefaultMaxRequestsInFlight bounds concurrent scrapes; more are answered
	// 503 and counted by promhttp_metric_handler_requests_total{code="503"}.
	DefaultMaxRequestsInFlight = 4
	// DefaultTimeout bounds one scrape; a slower gather is answered 503.
	DefaultTimeout = 10 * time.Second
)

// NewRegistry returns a fresh registry holding the Go runtime and process
// collectors and the gauge subgate_build_info{version,goversion} set to 1.
// version is the build's version string (set by the linker in main).
func NewRegistry(version string) *prometheus.Registry {
	if version == "" {
		version = "unknown"
	}
	reg := prometheus.NewRegistry()
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: Namespace,
		Name:      "build_info",
		Help:      "A constant 1 labelled with the version of subgate and of Go it was built with.",
	}, []string{"version", "goversion"})
	buildInfo.WithLabelValues(version, runtime.Version()).Set(1)
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		buildInfo,
	)
	return reg
}

// HandlerOptions tunes HandlerWithOptions. Zero fields take the defaults
// above.
type HandlerOptions struct {
	// MaxRequestsInFlight bounds concurrent scrapes (default
	// DefaultMaxRequestsInFlight).
	MaxRequestsInFlight int
	// Timeout bounds one scrape (default DefaultTimeout).
	Timeout time.Duration
}

// Handler returns the /metrics handler for reg with the default options.
// Gather and encoding errors are logged to log at Error level.
func Handler(reg *prometheus.Registry, log *slog.Logger) http.Handler {
	return HandlerWithOptions(reg, log, HandlerOptions{})
}

// HandlerWithOptions returns the /metrics handler for reg. It serves the
// Prometheus text format and, when the scraper asks for it, OpenMetrics. It
// registers promhttp_metric_handler_requests_total,
// promhttp_metric_handler_requests_in_flight and
// promhttp_metric_handler_errors_total in reg; calling it again with the same
// registry reuses them.
func HandlerWithOptions(reg *prometheus.Registry, log *slog.Logger, o HandlerOptions) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.MaxRequestsInFlight <= 0 {
		o.MaxRequestsInFlight = DefaultMaxRequestsInFlight
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	errLog := slog.NewLogLogger(log.With("component", "metrics").Handler(), slog.LevelError)
	h := promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:            errLog,
		ErrorHandling:       promhttp.ContinueOnError,
		Registry:            reg,
		MaxRequestsInFlight: o.MaxRequestsInFlight,
		Timeout:             o.Timeout,
		EnableOpenMetrics:   true,
	})
	return promhttp.InstrumentMetricHandler(reg, h)
}
