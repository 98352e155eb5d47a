package iotda

import (
	"testing"
	"time"
)

// TestMeasureRate also carries the simulator's former maxPerSecond cases
// (same inputs, sorted, same MaxInWindow).
func TestMeasureRate(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms ...int) []time.Time {
		var out []time.Time
		for _, m := range ms {
			out = append(out, t0.Add(time.Duration(m)*time.Millisecond))
		}
		return out
	}
	for _, tc := range []struct {
		in         []time.Time
		limit      int
		max, viol  int
		tightestMs int // -1: none
		tightestAt int
	}{
		{nil, 1, 0, 0, -1, 0},
		{at(0), 1, 1, 0, -1, 0},
		{at(0, 999), 1, 2, 1, 999, 0},
		{at(0, 1000), 1, 1, 0, 1000, 0},
		{at(0, 500, 999, 1200, 1499), 3, 4, 1, 999, 1},
		{at(0, 999, 1999, 2998), 1, 2, 2, 999, 0},
		{at(0, 10, 20), 0, 3, 0, -1, 0},
	} {
		st := MeasureRate(tc.in, tc.limit, time.Second)
		want := time.Duration(tc.tightestMs) * time.Millisecond
		if tc.tightestMs < 0 {
			want = -1
		}
		if st.MaxInWindow != tc.max || st.Violations != tc.viol || st.Tightest != want || (want >= 0 && st.TightestAt != tc.tightestAt) {
			t.Errorf("%v limit %d: %+v, want max %d, violations %d, tightest %v at %d",
				tc.in, tc.limit, st, tc.max, tc.viol, want, tc.tightestAt)
		}
	}
}
