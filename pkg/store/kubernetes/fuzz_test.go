package kubernetes

import (
	"encoding/json"
	"testing"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api/crd"
	"github.com/ursamesh/ursa/pkg/store"
)

// FuzzDecode: whatever object the API server hands back (anyone with RBAC
// can write one with kubectl), reading it is a resource or an error, never
// a crash.
func FuzzDecode(f *testing.F) {
	f.Add(`{"apiVersion":"ursa.io/v1alpha1","kind":"TrafficRoute","mesh":"default","metadata":{"name":"r","resourceVersion":"12","annotations":{"ursa.io/version":"3","ursa.io/creation-time":"2026-12-05T20:00:00.123456Z"}},"spec":{"destination":{"ursa.io/service":"b"},"split":[{"weight":1}]}}`)
	f.Add(`{"apiVersion":"ursa.io/v1alpha1","kind":"Mesh","metadata":{"name":"m","resourceVersion":"x","annotations":{"ursa.io/version":"-1"}}}`)
	f.Add(`{"apiVersion":"ursa.io/v1alpha1","kind":"ServiceInsight","mesh":"m","metadata":{"name":"s"},"status":{"zone":"z","service":"s"}}`)
	f.Add(`{"kind":"Mesh","metadata":[]}`)
	f.Add(`{"apiVersion":"ursa.io/v1alpha1","kind":"Dataplane","mesh":"m","metadata":{"name":"web-1","namespace":"apps","resourceVersion":"5"},"spec":{"networking":{"address":"1.2.3.4"}}}`)
	f.Add(`{"apiVersion":"ursa.io/v1alpha1","kind":"TrafficRoute","mesh":"m","metadata":{"name":"r1.00aa","namespace":"ursa-system","labels":{"ursa.io/origin":"global"},"annotations":{"ursa.io/name":"r1"}},"spec":{}}`)
	f.Add(`{"apiVersion":"v1","kind":"Secret","type":"ursa.io/zone-ca","metadata":{"name":"zone-ca.z.0011","resourceVersion":"9","annotations":{"ursa.io/name":"z","ursa.io/mesh":"m","ursa.io/version":"2"}},"data":{"certPEM":"Yw==","keyPEM":"aw=="}}`)
	f.Add(`{"apiVersion":"ursa.io/v1alpha1","kind":"ZoneInsight","metadata":{"name":"z"},"status":7}`)
	s := &Store{ns: "ursa-system", log: zap.NewNop()}
	f.Fuzz(func(t *testing.T, doc string) {
		var obj crd.Object
		if json.Unmarshal([]byte(doc), &obj) != nil || obj == nil {
			return
		}
		r, err := s.decode(obj)
		if err == nil && r == nil {
			t.Fatal("decode returned neither a resource nor an error")
		}
		if _, err := s.parse(obj); err == nil {
			s.event(store.OpUpdate, obj)
		}
	})
}
