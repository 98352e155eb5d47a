package metrics_test

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/subgate/subgate/metrics"
)

func TestNewRegistryCollectors(t *testing.T) {
	reg := metrics.NewRegistry("1.2.3")
	checkBuildInfo(t, reg, "1.2.3")
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var goSeen, processSeen bool
	for _, mf := range mfs {
		switch {
		case mf.GetName() == "go_goroutines":
			goSeen = true
		case strings.HasPrefix(mf.GetName(), "process_"):
			processSeen = true
		}
	}
	if !goSeen {
		t.Error("go collector missing: no go_goroutines")
	}
	// The process collector reports nothing on platforms without procfs.
	if runtime.GOOS == "linux" && !processSeen {
		t.Error("process collector missing: no process_* metric")
	}
}

func TestNewRegistryEmptyVersion(t *testing.T) {
	reg := metrics.NewRegistry("")
	checkBuildInfo(t, reg, "unknown")
}

func TestRegistriesAreIndependent(t *testing.T) {
	a, b := metrics.NewRegistry("a"), metrics.NewRegistry("b")
	c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "x_total", Help: "x"})
	a.MustRegister(c)
	if err := b.Register(c); err != nil {
		t.Fatalf("second registry refused a collector of the first: %v", err)
	}
}

func scrape(t *testing.T, h http.Handler, accept string) (*http.Response, string) {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	res := rec.Result()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, string(body)
}

func TestHandlerServesTextAndOpenMetrics(t *testing.T) {
	reg := metrics.NewRegistry("v1")
	h := metrics.Handler(reg, nil)

	res, body := scrape(t, h, "")
	if res.StatusCode != http.StatusOK {
		t.Fatalf("status %d", res.StatusCode)
	}
	if !strings.Contains(body, `subgate_build_info{goversion=`) {
		t.Errorf("text body lacks build info:\n%s", body)
	}

	res, body = scrape(t, h, "application/openmetrics-text; version=1.0.0")
	if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/openmetrics-text") {
		t.Errorf("content type %q, want openmetrics", ct)
	}
	if !strings.HasSuffix(body, "# EOF\n") {
		t.Errorf("openmetrics body lacks # EOF terminator")
	}

	// The handler counts its own scrapes.
	if n := value(t, reg, "promhttp_metric_handler_requests_total", "code", "200"); n < 2 {
		t.Errorf("promhttp_metric_handler_requests_total{code=200} = %v, want >= 2", n)
	}
}

// value gathers reg and returns the value of the counter or gauge name whose
// label lname is lvalue (lname "" for an unlabelled metric); it fails the test
// when there is none.
func value(t *testing.T, reg prometheus.Gatherer, name, lname, lvalue string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if lname != "" && !hasLabel(m, lname, lvalue) {
				continue
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("no %s{%s=%q}", name, lname, lvalue)
	return 0
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}

func checkBuildInfo(t *testing.T, reg prometheus.Gatherer, version string) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "subgate_build_info" {
			continue
		}
		if mf.GetType() != dto.MetricType_GAUGE || len(mf.GetMetric()) != 1 {
			t.Fatalf("subgate_build_info: type %v with %d series, want one gauge", mf.GetType(), len(mf.GetMetric()))
		}
		m := mf.GetMetric()[0]
		if !hasLabel(m, "version", version) || !hasLabel(m, "goversion", runtime.Version()) || len(m.GetLabel()) != 2 {
			t.Errorf("subgate_build_info labels %v, want version=%q goversion=%q", m.GetLabel(), version, runtime.Version())
		}
		if m.GetGauge().GetValue() != 1 {
			t.Errorf("subgate_build_info = %v, want 1", m.GetGauge().GetValue())
		}
		return
	}
	t.Fatal("subgate_build_info missing")
}

func TestHandlerTwiceOnSameRegistry(t *testing.T) {
	reg := metrics.NewRegistry("v1")
	metrics.Handler(reg, nil)
	h := metrics.Handler(reg, nil) // must not panic on duplicate registration
	if res, _ := scrape(t, h, ""); res.StatusCode != http.StatusOK {
		t.Fatalf("status %d", res.StatusCode)
	}
}

type failingCollector struct{ desc *prometheus.Desc }

func (f failingCollector) Describe(ch chan<- *prometheus.Desc) { ch <- f.desc }
func (f failingCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.NewInvalidMetric(f.desc, errors.New("broken collector"))
}

func TestHandlerLogsGatherErrors(t *testing.T) {
	reg := metrics.NewRegistry("v1")
	reg.MustRegister(failingCollector{prometheus.NewDesc("subgate_test_broken", "broken", nil, nil)})
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	res, body := scrape(t, metrics.Handler(reg, log), "")
	// ContinueOnError: the good metrics are still served.
	if res.StatusCode != http.StatusOK || !strings.Contains(body, "subgate_build_info") {
		t.Fatalf("status %d, body:\n%s", res.StatusCode, body)
	}
	out := buf.String()
	if !strings.Contains(out, "level=ERROR") || !strings.Contains(out, "broken collector") ||
		!strings.Contains(out, "component=metrics") {
		t.Errorf("gather error not logged through slog: %q", out)
	}
}

func TestHandlerMaxRequestsInFlight(t *testing.T) {
	reg := metrics.NewRegistry("v1")
	entered := make(chan struct{})
	release := make(chan struct{})
	reg.MustRegister(blockingCollector{
		desc: prometheus.NewDesc("subgate_test_blocking", "blocks", nil, nil),
		once: new(sync.Once), entered: entered, release: release,
	})
	h := metrics.HandlerWithOptions(reg, nil, metrics.HandlerOptions{MaxRequestsInFlight: 1})

	done := make(chan int, 1)
	go func() {
		req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		done <- rec.Code
	}()
	<-entered
	res, _ := scrape(t, h, "")
	close(release)
	if res.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("second concurrent scrape: status %d, want 503", res.StatusCode)
	}
	if code := <-done; code != http.StatusOK {
		t.Errorf("first scrape: status %d, want 200", code)
	}
}

type blockingCollector struct {
	desc             *prometheus.Desc
	once             *sync.Once
	entered, release chan struct{}
}

func (b blockingCollector) Describe(ch chan<- *prometheus.Desc) { ch <- b.desc }
func (b blockingCollector) Collect(ch chan<- prometheus.Metric) {
	b.once.Do(func() { close(b.entered) })
	<-b.release
	ch <- prometheus.MustNewConstMetric(b.desc, prometheus.GaugeValue, 1)
}
