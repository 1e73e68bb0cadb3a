package main

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/client/clienttest"
)

func drainFixture(t *testing.T) (*clienttest.Server, string) {
	t.Helper()
	fake, url := startFake(t)
	yes := true
	fake.Add(
		&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default", Version: 1}},
		&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "other", Version: 1}},
		&api.Zone{Meta: api.Meta{Type: "Zone", Name: "zone-3", Version: 1}, Enabled: &yes},
		// The user's own Failover: drain must leave it alone.
		&api.Failover{Meta: api.Meta{Type: "Failover", Mesh: "default", Name: "billing-order", Version: 1},
			Spec: api.FailoverSpec{Destination: map[string]string{api.TagService: "billing"}, LocalityAware: true, Order: []string{"zone-3"}}},
	)
	return fake, url
}

func TestDrainWritesLabelledFailoversAndUndrainRemovesThem(t *testing.T) {
	fake, url := drainFixture(t)
	res := ursactl(t, nil, "", "--api-server", url, "zone", "drain", "zone-3")
	if res.code != exitOK {
		t.Fatalf("drain: %d %s", res.code, res.stderr)
	}
	for _, mesh := range []string{"default", "other"} {
		r, ok := fake.Lookup(api.Key{Type: "Failover", Mesh: mesh, Name: "drain-zone-3"})
		if !ok {
			t.Fatalf("no drain Failover in mesh %s; stdout:\n%s", mesh, res.stdout)
		}
		f := r.(*api.Failover)
		if f.Labels[api.LabelMadeBy] != api.MadeByDrain || f.Labels[api.LabelDrainZone] != "zone-3" ||
			f.Spec.Destination[api.TagService] != "*" || len(f.Spec.Drained) != 1 || f.Spec.Drained[0] != "zone-3" || f.Spec.Orders() {
			t.Fatalf("drain Failover in %s: %+v", mesh, f)
		}
		if _, ok := f.Labels[api.LabelExpires]; ok {
			t.Fatal("a drain without --for expires")
		}
	}
	res = ursactl(t, nil, "", "--api-server", url, "zone", "undrain", "zone-3")
	if res.code != exitOK || strings.Count(res.stdout, "deleted") != 2 {
		t.Fatalf("undrain: %d %q %s", res.code, res.stdout, res.stderr)
	}
	for _, r := range fake.Resources() {
		if r.GetMeta().Labels[api.LabelMadeBy] == api.MadeByDrain {
			t.Fatalf("undrain left %s", r.GetMeta().Name)
		}
	}
	if _, ok := fake.Lookup(api.Key{Type: "Failover", Mesh: "default", Name: "billing-order"}); !ok {
		t.Fatal("undrain deleted the user's own Failover")
	}
	res = ursactl(t, nil, "", "--api-server", url, "zone", "undrain", "zone-3")
	if res.code != exitOK || !strings.Contains(res.stdout, "not drained") {
		t.Fatalf("second undrain: %d %q", res.code, res.stdout)
	}
}

func TestDrainOneServiceWithExpiry(t *testing.T) {
	fake, url := drainFixture(t)
	before := time.Now()
	res := ursactl(t, nil, "", "--api-server", url, "zone", "drain", "zone-3", "-m", "default", "--service", "billing", "--for", "10m")
	if res.code != exitOK {
		t.Fatalf("drain: %d %s", res.code, res.stderr)
	}
	r, ok := fake.Lookup(api.Key{Type: "Failover", Mesh: "default", Name: "drain-zone-3.billing"})
	if !ok {
		t.Fatalf("no drain Failover for billing: %s", res.stdout)
	}
	sec, err := strconv.ParseInt(r.GetMeta().Labels[api.LabelExpires], 10, 64)
	if err != nil || sec < before.Add(10*time.Minute).Unix()-1 || sec > time.Now().Add(10*time.Minute).Unix()+1 {
		t.Fatalf("expires label %q, want about 10m from now", r.GetMeta().Labels[api.LabelExpires])
	}
	if _, ok := fake.Lookup(api.Key{Type: "Failover", Mesh: "other", Name: "drain-zone-3.billing"}); ok {
		t.Fatal("--mesh default drained another mesh")
	}
}

func TestDrainRefusesWhatCannotWork(t *testing.T) {
	fake, url := drainFixture(t)
	for _, tt := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"zone", "drain", "zone-9"}, exitError, `zone "zone-9" does not exist`},
		{[]string{"zone", "drain"}, exitUsage, "accepts 1 arg"},
		{[]string{"zone", "drill", "zone-3"}, exitUsage, "--for"},
		{[]string{"zone", "drain", "zone-3", "--for", "10ms"}, exitUsage, "at least 1s"},
	} {
		res := ursactl(t, nil, "", append([]string{"--api-server", url}, tt.args...)...)
		if res.code != tt.code || !strings.Contains(res.stderr, tt.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", tt.args, res.code, res.stderr, tt.code, tt.want)
		}
	}
	for _, r := range fake.Resources() {
		if r.GetMeta().Labels[api.LabelMadeBy] == api.MadeByDrain {
			t.Fatalf("a refused command wrote %s", r.GetMeta().Name)
		}
	}
}

func TestDrillDrainsThenUndrains(t *testing.T) {
	fake, url := drainFixture(t)
	res := ursactl(t, nil, "", "--api-server", url, "zone", "drill", "zone-3", "--for", "1s", "--every", "200ms")
	if res.code != exitOK || !strings.Contains(res.stdout, "written") || !strings.Contains(res.stdout, "drill over") {
		t.Fatalf("drill: %d %q %s", res.code, res.stdout, res.stderr)
	}
	for _, r := range fake.Resources() {
		if r.GetMeta().Labels[api.LabelMadeBy] == api.MadeByDrain {
			t.Fatalf("the drill left %s", r.GetMeta().Name)
		}
	}
}

// TestDrillUndrainsOnInterrupt is Ctrl-C in the middle of a drill.
func TestDrillUndrainsOnInterrupt(t *testing.T) {
	fake, url := drainFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	var stdout, stderr strings.Builder
	code := run(ctx, []string{"--api-server", url, "zone", "drill", "zone-3", "--for", "1h"}, strings.NewReader(""), &stdout, &stderr,
		func(string) string { return "" })
	if code != exitOK || !strings.Contains(stdout.String(), "interrupted") || !strings.Contains(stdout.String(), "deleted") {
		t.Fatalf("drill: %d %q %s", code, stdout.String(), stderr.String())
	}
	for _, r := range fake.Resources() {
		if r.GetMeta().Labels[api.LabelMadeBy] == api.MadeByDrain {
			t.Fatalf("the interrupted drill left %s", r.GetMeta().Name)
		}
	}
}
