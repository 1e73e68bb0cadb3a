package kubernetes

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/ursamesh/ursa/pkg/api"
)

// FuzzTranslate decodes arbitrary JSON as a pod, a namespace and a list of
// Services and translates them: no panic; a decode error says what it was
// decoding; an error names the pod; a Dataplane always validates, and a
// result has a Dataplane or says why not.
func FuzzTranslate(f *testing.F) {
	read := func(name string) []byte {
		b, err := os.ReadFile("testdata/" + name)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	pod, ns, svcs := read("pod.json"), read("namespace.json"), read("services.json")
	f.Add(pod, ns, svcs)
	f.Add([]byte(`{"metadata":{"name":"p","namespace":"n","labels":{"a":"b"}},"status":{"podIP":"::1"}}`),
		[]byte(`{"metadata":{"name":"n","labels":{"ursa.io/sidecar-injection":"enabled"}}}`),
		[]byte(`{"items":[{"metadata":{"name":"s","namespace":"n"},"spec":{"selector":{"a":"b"},"ports":[{"port":70000,"targetPort":"x"},{"port":1,"targetPort":-3},{"port":2,"protocol":"SCTP"}]}}]}`))
	f.Add([]byte(`{"metadata":{"name":"P.Q","namespace":"n","annotations":{"ursa.io/mesh":""}},"spec":{"containers":[{"ports":[{"name":"x","containerPort":0}]}]},"status":{"podIP":"1.2.3.4","conditions":[{"type":"Ready","status":"True"}]}}`),
		[]byte(`{"metadata":{"name":"n","labels":{"ursa.io/sidecar-injection":"enabled"}}}`),
		[]byte(`{"items":[{"metadata":{"name":"s","namespace":"n"},"spec":{"selector":{"":""},"ports":[{"port":80,"targetPort":"x"}]}}]}`))
	f.Add([]byte(`null`), []byte(`{}`), []byte(`{"items":null}`))
	f.Fuzz(func(t *testing.T, podJSON, nsJSON, svcJSON []byte) {
		p, err := DecodePod(podJSON)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "decode pod: ") {
				t.Fatalf("error %q does not say it decoded a pod", err)
			}
			return
		}
		n, err := DecodeNamespace(nsJSON)
		if err != nil {
			return
		}
		s, err := DecodeServiceList(svcJSON)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "decode service list: ") {
				t.Fatalf("error %q does not say it decoded a service list", err)
			}
			return
		}
		res, err := Translate(p, n, s, "zone-1")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "translate pod") {
				t.Fatalf("error %q does not name the pod", err)
			}
			return
		}
		if res.Dataplane == nil {
			if res.Absent == "" {
				t.Fatal("no Dataplane and no reason")
			}
			return
		}
		if err := api.Validate(res.Dataplane); err != nil {
			t.Fatalf("invalid Dataplane: %v", err)
		}
		if _, err := json.Marshal(res.Dataplane); err != nil {
			t.Fatal(err)
		}
	})
}
