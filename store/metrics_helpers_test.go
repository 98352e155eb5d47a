package store

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// These helpers do what prometheus/testutil does; testutil itself needs a
// module (kylelemons/godebug) that is not in go.mod.

// metricValue returns the value of the single metric c collects (a counter,
// gauge or untyped value).
func metricValue(t *testing.T, c prometheus.Collector) float64 {
	t.Helper()
	ch := make(chan prometheus.Metric, 16)
	c.Collect(ch)
	close(ch)
	var vals []float64
	for m := range ch {
		var pb dto.Metric
		if err := m.Write(&pb); err != nil {
			t.Fatalf("write metric: %v", err)
		}
		switch {
		case pb.Counter != nil:
			vals = append(vals, pb.Counter.GetValue())
		case pb.Gauge != nil:
			vals = append(vals, pb.Gauge.GetValue())
		case pb.Untyped != nil:
			vals = append(vals, pb.Untyped.GetValue())
		default:
			t.Fatalf("metric %s is not a counter or gauge", m.Desc())
		}
	}
	if len(vals) != 1 {
		t.Fatalf("collector yielded %d metrics, want 1", len(vals))
	}
	return vals[0]
}

// gathered renders every counter and gauge sample of the named families in
// reg as `name{k="v",...} value` lines, sorted.
func gathered(t *testing.T, reg *prometheus.Registry, names ...string) string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var lines []string
	for _, mf := range mfs {
		if !slices.Contains(names, mf.GetName()) {
			continue
		}
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, lp := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", lp.GetName(), lp.GetValue()))
			}
			var v float64
			switch {
			case m.Counter != nil:
				v = m.Counter.GetValue()
			case m.Gauge != nil:
				v = m.Gauge.GetValue()
			default:
				t.Fatalf("%s is not a counter or gauge", mf.GetName())
			}
			name := mf.GetName()
			if len(labels) > 0 {
				name += "{" + strings.Join(labels, ",") + "}"
			}
			lines = append(lines, fmt.Sprintf("%s %g", name, v))
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// checkGathered compares gathered(names of want) with want, a set of
// `name{labels} value` lines in any order.
func checkGathered(t *testing.T, reg *prometheus.Registry, want string) {
	t.Helper()
	var lines, names []string
	for l := range strings.Lines(want) {
		l = strings.TrimSpace(l)
		if l == "" {
			continue
		}
		lines = append(lines, l)
		name, _, _ := strings.Cut(l, " ")
		name, _, _ = strings.Cut(name, "{")
		names = append(names, name)
	}
	slices.Sort(lines)
	if got, w := gathered(t, reg, names...), strings.Join(lines, "\n"); got != w {
		t.Errorf("metrics:\n%s\nwant:\n%s", got, w)
	}
}

// familyCount returns how many of names reg exposes.
func familyCount(t *testing.T, reg *prometheus.Registry, names ...string) int {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	n := 0
	for _, mf := range mfs {
		if slices.Contains(names, mf.GetName()) {
			n++
		}
	}
	return n
}
