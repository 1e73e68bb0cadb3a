package api

import (
	"reflect"
	"testing"
	"time"
)

func TestDeepCopySharesNothing(t *testing.T) {
	on := true
	now := time.Now()
	in := []Resource{
		&Mesh{Meta: Meta{Type: "Mesh", Name: "m", Labels: map[string]string{"a": "b"}, CreationTime: now}, MTLS: &MeshMTLS{Enabled: true}},
		&Zone{Meta: Meta{Type: "Zone", Name: "z"}, Enabled: &on},
		&Secret{Meta: Meta{Type: "Secret", Mesh: "m", Name: "s"}, Data: []byte{1, 2}},
		&TrafficRoute{Meta: Meta{Type: "TrafficRoute", Mesh: "m", Name: "r"}, Spec: TrafficRouteSpec{
			Destination: map[string]string{TagService: "b"}, Split: []Split{{Weight: 1, Tags: map[string]string{"v": "1"}}}}},
		&ZoneInsight{Meta: Meta{Type: "ZoneInsight", Name: "z"}, Sync: map[string]TypeSyncStat{"Mesh": {ResponsesSent: 1}}},
	}
	for _, r := range in {
		c := DeepCopy(r)
		if !reflect.DeepEqual(r, c) {
			t.Fatalf("copy of %T differs: %+v", r, c)
		}
	}
	m := DeepCopy(in[0]).(*Mesh)
	m.Labels["a"], m.MTLS.Enabled = "x", false
	r := DeepCopy(in[3]).(*TrafficRoute)
	r.Spec.Split[0].Tags["v"] = "2"
	s := DeepCopy(in[2]).(*Secret)
	s.Data[0] = 9
	z := DeepCopy(in[1]).(*Zone)
	*z.Enabled = false
	if in[0].GetMeta().Labels["a"] != "b" || !in[0].(*Mesh).MTLS.Enabled || in[3].(*TrafficRoute).Spec.Split[0].Tags["v"] != "1" ||
		in[2].(*Secret).Data[0] != 1 || !on {
		t.Fatal("a copy shares memory with its original")
	}
}
