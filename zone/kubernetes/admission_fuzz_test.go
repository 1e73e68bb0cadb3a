package kubernetes

import (
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
)

// FuzzDecodeReview feeds arbitrary bytes to the admission decoder, and what
// it accepts to the injector and the validator: no panic; a decode error
// says it is about the admission review; an accepted review has a uid and
// gets a response; an injection patch is JSON.
func FuzzDecodeReview(f *testing.F) {
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"kind":"Pod"},"namespace":"shop","operation":"CREATE","object":` + podJSON + `}}`))
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"ursa.io","kind":"TrafficRoute"},"operation":"UPDATE","object":{"apiVersion":"ursa.io/v1alpha1","kind":"TrafficRoute","metadata":{"name":"r"},"mesh":"default","spec":{}},"oldObject":{"metadata":{"labels":{"ursa.io/origin":"global"}}}}}`))
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"ursa.io","kind":"Mesh"},"operation":"DELETE","oldObject":null}}`))
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"kind":"Pod"},"operation":"CREATE","object":{"spec":{"containers":[{"ports":[{"containerPort":-1},{"containerPort":9901}]}]}}}}`))
	f.Add([]byte(`{"request":null}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeReview(b)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "admission review: ") {
				t.Fatalf("error %q does not say what it decoded", err)
			}
			return
		}
		if r.Request == nil || r.Request.UID == "" {
			t.Fatal("accepted a review without a request uid")
		}
		req := httptest.NewRequest("POST", "/", nil)
		in := testInjector()
		resp, err := in.Review(req, r.Request)
		if err != nil {
			t.Fatalf("inject: %v", err) // no namespace lookup: nothing can fail
		}
		if resp.Patch != nil && !json.Valid(resp.Patch) {
			t.Fatalf("patch is not JSON: %s", resp.Patch)
		}
		v := &Validator{Self: "system:serviceaccount:ursa-system:ursa"}
		if resp, err = v.Review(req, r.Request); err != nil || resp == nil {
			t.Fatalf("validate: %v", err)
		}
	})
}
