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

// FuzzWatchEvent feeds the controller's cache arbitrary objects as watch
// events (and lists) of each kind it watches, then translates every pod it
// holds, as a Dataplane and as an ingress: no panic; what does not decode
// is left out with an error naming its kind; a ZoneIngress always
// validates.
func FuzzWatchEvent(f *testing.F) {
	pod, err := os.ReadFile("testdata/pod.json")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(uint8(1), false, pod)
	f.Add(uint8(0), false, []byte(`{"metadata":{"name":"default","labels":{"ursa.io/sidecar-injection":"enabled"}}}`))
	f.Add(uint8(1), false, []byte(`{"metadata":{"name":"i","namespace":"ursa-system","labels":{"ursa.io/ingress":"enabled","app":"i"}},"status":{"podIP":"10.0.0.9"}}`))
	f.Add(uint8(2), false, []byte(`{"metadata":{"name":"i","namespace":"ursa-system"},"spec":{"type":"LoadBalancer","selector":{"app":"i"},"ports":[{"port":10001,"nodePort":30001}]},"status":{"loadBalancer":{"ingress":[{"hostname":"lb.example"}]}}}`))
	f.Add(uint8(3), false, []byte(`{"metadata":{"name":"n1"},"status":{"addresses":[{"type":"InternalIP","address":"192.0.2.1"}]}}`))
	f.Add(uint8(5), true, []byte(`{"metadata":{"name":"x","namespace":"y"}}`))
	f.Add(uint8(6), false, []byte(`{"metadata":{"name":"x"},"status":{"addresses":7}}`))
	kinds := []string{"namespaces", "pods", "services", "nodes"}
	f.Fuzz(func(t *testing.T, kind uint8, deleted bool, obj []byte) {
		c := newCache()
		// A namespace, service and node the event may change or meet.
		for _, seed := range []change{
			{kind: "namespaces", obj: []byte(`{"metadata":{"name":"ursa-system","labels":{"ursa.io/sidecar-injection":"enabled"}}}`)},
			{kind: "services", obj: []byte(`{"metadata":{"name":"i","namespace":"ursa-system"},"spec":{"type":"NodePort","selector":{"app":"i"},"ports":[{"port":10001,"nodePort":30001}]}}`)},
			{kind: "nodes", obj: []byte(`{"metadata":{"name":"n0"},"status":{"addresses":[{"type":"ExternalIP","address":"198.51.100.1"}]}}`)},
		} {
			if _, err := c.apply(seed, "ursa-system"); err != nil {
				t.Fatal(err)
			}
		}
		ch := change{kind: kinds[int(kind)%len(kinds)], deleted: deleted, obj: obj}
		if kind >= 4 { // a whole list of one object
			ch = change{kind: ch.kind, synced: true, list: []json.RawMessage{obj}}
		}
		if _, err := c.apply(ch, "ursa-system"); err != nil && !strings.Contains(err.Error(), "decode") {
			t.Fatalf("error %q does not say what it decoded", err)
		}
		for _, key := range c.allPods() {
			ns, name := splitKey(key)
			in := c.inputs(ns, name)
			if in.pod == nil || in.ns == nil {
				continue
			}
			Translate(in.pod, in.ns, in.services, "zone-1")
			ing, absent, err := TranslateIngress(in.pod, in.services, in.nodes, "zone-1")
			switch {
			case err != nil:
			case ing == nil && absent == "":
				t.Fatal("no ZoneIngress and no reason")
			case ing != nil:
				if err := api.Validate(ing); err != nil {
					t.Fatalf("invalid ZoneIngress: %v", err)
				}
			}
		}
	})
}
