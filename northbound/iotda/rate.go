package iotda

import "time"

// RateStats applies the upstream cap to arrival times (decisions D21: no
// window of one second may hold more than the cap).
type RateStats struct {
	// MaxInWindow is the most times within any span shorter than the
	// window: a window holds a new time while its oldest is less than a
	// window older.
	MaxInWindow int
	// Violations counts the times with limit others less than a window
	// before them.
	Violations int
	// Tightest is the shortest span of limit+1 consecutive times, -1 when
	// there are not that many; TightestAt is the index of its first time.
	Tightest   time.Duration
	TightestAt int
}

// MeasureRate computes RateStats of sorted times for a cap of limit per
// window. The simulator, the load scripts' wire count and the tests all
// judge the quota with it.
func MeasureRate(sorted []time.Time, limit int, window time.Duration) RateStats {
	st := RateStats{Tightest: -1}
	lo := 0
	for i, t := range sorted {
		for t.Sub(sorted[lo]) >= window {
			lo++
		}
		st.MaxInWindow = max(st.MaxInWindow, i-lo+1)
		if limit > 0 && i >= limit {
			d := t.Sub(sorted[i-limit])
			if d < window {
				st.Violations++
			}
			if st.Tightest < 0 || d < st.Tightest {
				st.Tightest, st.TightestAt = d, i-limit
			}
		}
	}
	return st
}
