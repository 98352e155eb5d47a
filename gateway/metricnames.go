package gateway

import (
	"errors"
	"os"
	"regexp"
	"slices"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/subgate/subgate/metrics"
	"github.com/subgate/subgate/northbound"
	"github.com/subgate/subgate/southbound"
	"github.com/subgate/subgate/store"
)

// recorder registers into a registry and remembers every collector, so
// that families with no series yet can still be named.
type recorder struct {
	prometheus.Registerer
	cs []prometheus.Collector
}

func (r *recorder) Register(c prometheus.Collector) error {
	r.cs = append(r.cs, c)
	return r.Registerer.Register(c)
}

func (r *recorder) MustRegister(cs ...prometheus.Collector) {
	r.cs = append(r.cs, cs...)
	r.Registerer.MustRegister(cs...)
}

var fqNameRE = regexp.MustCompile(`fqName: "([^"]+)"`)

// MetricNames returns the name of every metric family a gateway exports,
// built from the real components (nothing is bound or connected). The
// deploy kit's tests check dashboards and alert rules against it.
func MetricNames() ([]string, error) {
	reg := metrics.NewRegistry("names")
	rec := &recorder{Registerer: reg}
	cfg := DefaultConfig()
	cfg.Northbound.Server, cfg.Northbound.DeviceID, cfg.Northbound.Secret = "tcp://127.0.0.1:1", "names", "names"
	g, err := New(cfg, Deps{Registry: reg})
	if err != nil {
		return nil, err
	}
	g.m = newGatewayMetrics(rec, g)
	newOTAMetrics(rec)
	if _, err := northbound.New(northbound.Config{Server: cfg.Northbound.Server, DeviceID: "names", Secret: "names"}, nil, rec); err != nil {
		return nil, err
	}
	if _, err := southbound.New(southbound.Config{Listen: "127.0.0.1:0", Codec: "jsonl", Auth: "open"}, g, nil, nil, rec); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "subgate-names-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	st, err := store.Open(store.Options{Dir: dir, Registerer: rec, NoSync: true})
	if err != nil {
		return nil, err
	}
	defer st.Close()

	names := map[string]bool{}
	mfs, err := reg.Gather()
	if err != nil && len(mfs) == 0 {
		return nil, err
	}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	descs := make(chan *prometheus.Desc, 64)
	go func() {
		for _, c := range rec.cs {
			c.Describe(descs)
		}
		close(descs)
	}()
	for d := range descs {
		if m := fqNameRE.FindStringSubmatch(d.String()); m != nil {
			names[m[1]] = true
		}
	}
	if len(names) == 0 {
		return nil, errors.New("gateway: no metrics registered")
	}
	out := make([]string, 0, len(names))
	for n := range names {
		out = append(out, n)
	}
	slices.Sort(out)
	return out, nil
}
