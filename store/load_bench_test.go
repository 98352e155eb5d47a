package store

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/subgate/subgate/subdevice"
)

// benchRecords is IoTDA's per-gateway sub-device maximum (iotda-protocol
// §7), the registry size subgate must load at start (issue 5).
const benchRecords = 50_000

// benchDevices returns n records shaped like the ones the gateway keeps
// after a sync and a day of traffic: every field an operator looks at is
// set, so the decode cost is the realistic one.
func benchDevices(n int) []subdevice.Device {
	seen := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	devs := make([]subdevice.Device, n)
	for i := range devs {
		node := "meter-" + strconv.Itoa(i)
		devs[i] = subdevice.Device{
			NodeID: node, DeviceID: "prod-energy_" + node, ProductID: "prod-energy",
			Name: "Meter " + strconv.Itoa(i), Status: subdevice.Offline,
			FwVersion: "1.4.2", SwVersion: "2.0.0", Remote: "10.1.2.3:40000",
			LastSeen: seen,
		}
	}
	return devs
}

// BenchmarkLoadRegistry measures what the gateway does with its store
// before it can serve: store.LoadDevices of 50,000 records, then
// subdevice.NewRegistry over them (gateway.Run, "store loaded"). It reports
// ms per start and records/s; it asserts nothing about speed.
func BenchmarkLoadRegistry(b *testing.B) {
	s, err := Open(Options{Dir: b.TempDir(), NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	devs := benchDevices(benchRecords)
	// One transaction per 5,000 records keeps the writer's batches small.
	for i := 0; i < len(devs); i += 5_000 {
		if err := s.PutDevices(ctx, devs[i:min(i+5_000, len(devs))]); err != nil {
			b.Fatal(err)
		}
	}
	if err := s.SetVersion(ctx, 1_000); err != nil {
		b.Fatal(err)
	}

	b.ReportAllocs()
	var total time.Duration
	for b.Loop() {
		start := time.Now()
		version, loaded, err := s.LoadDevices()
		if err != nil {
			b.Fatal(err)
		}
		reg := subdevice.NewRegistry(version, loaded)
		total += time.Since(start)
		if len(loaded) != benchRecords || reg.Version() != 1_000 {
			b.Fatalf("loaded %d records at version %d, want %d at 1000", len(loaded), reg.Version(), benchRecords)
		}
		if _, ok := reg.ByNode("meter-" + strconv.Itoa(benchRecords-1)); !ok {
			b.Fatal("last record missing from the registry")
		}
	}
	per := total / time.Duration(b.N)
	b.ReportMetric(float64(per.Microseconds())/1000, "ms/start")
	b.ReportMetric(benchRecords/per.Seconds(), "records/s")
}
