package xds

import (
	"math"
	"testing"
	"time"
)

// TestLoadsMergeOneReport: two clusters of one service sending to the same
// zone in one report (a zone-pinned subset failing over) add up; they do
// not halve the rate.
func TestLoadsMergeOneReport(t *testing.T) {
	l := NewLoads(2 * time.Second)
	now := time.Now()
	key := LoadKey{Mesh: "default", Service: "billing", Zone: "zone-2"}
	for i := range 2 {
		l.Add("default.web-1", []LoadSample{
			{LoadKey: key, Issued: 30, Successful: 30, Interval: time.Second},
			{LoadKey: key, Issued: 70, Successful: 70, Interval: time.Second},
		}, now.Add(time.Duration(i)*time.Second))
	}
	got := l.Services(now.Add(time.Second))
	if len(got) != 1 {
		t.Fatalf("services: %+v", got)
	}
	zl := got[0].Zones["zone-2"]
	if math.Abs(zl.PerSecond-100) > 0.01 || zl.Successful != 200 {
		t.Fatalf("zone-2: %+v, want 100/s and 200 in all", zl)
	}
}
