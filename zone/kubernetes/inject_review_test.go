package kubernetes

import (
	"math"
	"testing"
)

// TestReviewSidecarDrainTimeLargeGrace: a pod's terminationGracePeriodSeconds
// is an int64 the API server takes up to any non-negative value; the
// sidecar's --drain-time must never come out negative (ursa-dp refuses a
// negative one and the sidecar would never start: the pod never runs).
func TestReviewSidecarDrainTimeLargeGrace(t *testing.T) {
	for _, g := range []int64{9_300_000_000, math.MaxInt64 / 2, math.MaxInt64} {
		if d := sidecarDrainTime(&g); d < 0 {
			t.Errorf("terminationGracePeriodSeconds %d: --drain-time %s", g, d)
		}
	}
}
