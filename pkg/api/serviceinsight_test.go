package api

import (
	"reflect"
	"testing"
)

func TestServiceInsight(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want []string
	}{
		{"in its zone", `
type: ServiceInsight
mesh: default
name: billing
zone: zone-1
service: billing
traffic:
  zone-2: {connections: 1234, errors: 0, perSecond: 48.5}
  zone-3: {connections: 1200, errors: 1, perSecond: 47}`, nil},
		{"the global's copy", `
type: ServiceInsight
mesh: default
name: zone-1.billing
zone: zone-1
service: billing`, nil},
		{"everything wrong", `
type: ServiceInsight
mesh: default
name: payments
zone: Zone.1
service: "bad value!"
traffic:
  a.b: {connections: -1, perSecond: -2}`, []string{
			"zone: must be a zone name (a DNS-1123 label)",
			"service: must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
			`name: must be the service's name, "bad value!"`,
			"traffic[a.b]: key must be a zone name (a DNS-1123 label)",
			"traffic[a.b]: counts must not be negative",
			"traffic[a.b].perSecond: must be a non-negative number",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Decode([]byte(tt.doc))
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if got := causes(t, Validate(r)); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("causes:\n got  %q\n want %q", got, tt.want)
			}
			if tt.want == nil && !reflect.DeepEqual(DeepCopy(r), r) {
				t.Errorf("DeepCopy differs: %+v", DeepCopy(r))
			}
		})
	}
	d, ok := Lookup("ServiceInsight")
	if !ok || d.WrittenBy != TierSystem || d.KDS != SyncZoneToGlobal || d.Scope != ScopeMesh {
		t.Fatalf("descriptor %+v: want a mesh-scoped, system-written type that zones send to the global", d)
	}
	if z, ok := Resource(&ServiceInsight{Zone: "zone-1"}).(Zoned); !ok || z.OwnerZone() != "zone-1" {
		t.Fatal("a ServiceInsight must belong to its zone")
	}
}

// TestSameSummary: insights that differ only in ACKed versions summarise
// the same; a change of connection does not.
func TestSameSummary(t *testing.T) {
	a := &DataplaneInsight{Meta: Meta{Type: "DataplaneInsight", Mesh: "default", Name: "web-1"},
		ProxyStatus: ProxyStatus{Connected: true, Instance: "cp-a", Acked: map[string]string{"lds": "1"}}}
	b := DeepCopy(a).(*DataplaneInsight)
	b.Acked["lds"], b.Version = "2", 7
	if !SameSummary(a, b) {
		t.Fatal("an ACK changed the summary")
	}
	c := DeepCopy(a).(*DataplaneInsight)
	c.Connected = false
	if SameSummary(a, c) {
		t.Fatal("a disconnection kept the summary")
	}
	if s := SummaryOf(b).(*DataplaneInsight); s.Acked != nil || b.Acked == nil {
		t.Fatal("SummaryOf kept the ACKs, or changed its argument")
	}
}
