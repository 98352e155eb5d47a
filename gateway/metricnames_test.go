package gateway

import (
	"slices"
	"testing"
)

// TestMetricNamesHasFixedNames: the names dashboards and other tools rely
// on (issue 7) are exported.
func TestMetricNamesHasFixedNames(t *testing.T) {
	names, err := MetricNames()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"subgate_southbound_connections", "subgate_northbound_connected", "subgate_outbox_messages",
		"subgate_outbox_bytes", "subgate_outbox_oldest_age_seconds", "subgate_subdevices",
		"subgate_downlink_requests_total", "subgate_downlink_roundtrip_seconds", "subgate_store_commit_seconds",
		"subgate_northbound_puback_seconds", "subgate_northbound_packing_ratio", "subgate_northbound_quota_tokens",
		"go_goroutines", "process_resident_memory_bytes",
	} {
		if !slices.Contains(names, want) {
			t.Errorf("metric %s missing; have %v", want, names)
		}
	}
}
