package kubernetes

import (
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/ursamesh/ursa/pkg/api"
)

// objects decodes the testdata: a Deployment's pod as the API serves it, its
// injected namespace and the Services of the cluster.
func objects(t testing.TB) (*Pod, *Namespace, []Service) {
	t.Helper()
	read := func(name string) []byte {
		b, err := os.ReadFile("testdata/" + name)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	pod, err := DecodePod(read("pod.json"))
	if err != nil {
		t.Fatal(err)
	}
	ns, err := DecodeNamespace(read("namespace.json"))
	if err != nil {
		t.Fatal(err)
	}
	svcs, err := DecodeServiceList(read("services.json"))
	if err != nil {
		t.Fatal(err)
	}
	return pod, ns, svcs
}

func tags(service string, extra ...string) map[string]string {
	m := map[string]string{"app": "billing", "pod-template-hash": "7c5d9f8b6d", "version": "v2",
		api.TagService: service, api.TagZone: "zone-k8s"}
	for i := 0; i+1 < len(extra); i += 2 {
		m[extra[i]] = extra[i+1]
	}
	return m
}

func TestTranslate(t *testing.T) {
	ready := &api.Health{Ready: true}
	tests := []struct {
		name    string
		edit    func(p *Pod, ns *Namespace, svcs *[]Service)
		want    []api.Inbound // nil: no Dataplane
		mesh    string
		absent  string
		skipped []string // each must appear in some Skipped entry
		err     string
	}{{
		name: "running pod of two services",
		want: []api.Inbound{
			{Port: 8080, ServicePort: 8080, Tags: tags("billing_shop_svc_80"), Health: ready},
			{Port: 9102, ServicePort: 9102, Tags: tags("billing-metrics_shop_svc_9102"), Health: ready},
		},
		skipped: []string{
			"label empty: not a valid tag",
			"label ursa.io/service: reserved for Ursa",
			"service legacy: ExternalName",
			"service billing port 53: protocol UDP",
			`service billing port 9090: targetPort "grpc" names no TCP port`,
		},
	}, {
		name: "appProtocol makes an inbound L7",
		edit: func(_ *Pod, _ *Namespace, svcs *[]Service) {
			for i := range *svcs {
				for j := range (*svcs)[i].Spec.Ports {
					switch (*svcs)[i].Spec.Ports[j].Port {
					case 80:
						(*svcs)[i].Spec.Ports[j].AppProtocol = "kubernetes.io/h2c"
					case 9102:
						(*svcs)[i].Spec.Ports[j].AppProtocol = "example.com/custom"
					}
				}
			}
		},
		want: []api.Inbound{
			{Port: 8080, ServicePort: 8080, Tags: tags("billing_shop_svc_80", api.TagProtocol, api.ProtocolHTTP2), Health: ready},
			{Port: 9102, ServicePort: 9102, Tags: tags("billing-metrics_shop_svc_9102"), Health: ready},
		},
		skipped: []string{`service billing-metrics port 9102: appProtocol "example.com/custom" is not one Ursa proxies at L7`},
	}, {
		name: "not ready: registered, inbounds not ready",
		edit: func(p *Pod, _ *Namespace, _ *[]Service) { p.Status.Conditions[1].Status = "False" },
		want: []api.Inbound{
			{Port: 8080, ServicePort: 8080, Tags: tags("billing_shop_svc_80"), Health: &api.Health{}},
			{Port: 9102, ServicePort: 9102, Tags: tags("billing-metrics_shop_svc_9102"), Health: &api.Health{}},
		},
	}, {
		name: "no Ready condition reported yet",
		edit: func(p *Pod, _ *Namespace, _ *[]Service) { p.Status.Conditions = nil },
		want: []api.Inbound{
			{Port: 8080, ServicePort: 8080, Tags: tags("billing_shop_svc_80"), Health: &api.Health{}},
			{Port: 9102, ServicePort: 9102, Tags: tags("billing-metrics_shop_svc_9102"), Health: &api.Health{}},
		},
	}, {
		name: "terminating: not ready",
		edit: func(p *Pod, _ *Namespace, _ *[]Service) {
			ts := "2026-12-05T20:30:00Z"
			p.Metadata.DeletionTimestamp = &ts
		},
		want: []api.Inbound{
			{Port: 8080, ServicePort: 8080, Tags: tags("billing_shop_svc_80"), Health: &api.Health{}},
			{Port: 9102, ServicePort: 9102, Tags: tags("billing-metrics_shop_svc_9102"), Health: &api.Health{}},
		},
	}, {
		name: "numeric target port, absent target port, named port resolved",
		edit: func(p *Pod, _ *Namespace, svcs *[]Service) {
			p.Spec.Containers = append(p.Spec.Containers, Container{Name: "grpc-sidecar", Ports: []ContainerPort{{Name: "grpc", ContainerPort: 7070}}})
			*svcs = append(*svcs, Service{Metadata: ObjectMeta{Name: "admin", Namespace: "shop"},
				Spec: ServiceSpec{Selector: map[string]string{"app": "billing"}, Ports: []ServicePort{{Port: 8443}}}})
		},
		want: []api.Inbound{
			{Port: 8443, ServicePort: 8443, Tags: tags("admin_shop_svc_8443"), Health: ready},
			{Port: 8080, ServicePort: 8080, Tags: tags("billing_shop_svc_80"), Health: ready},
			{Port: 7070, ServicePort: 7070, Tags: tags("billing_shop_svc_9090"), Health: ready},
			{Port: 9102, ServicePort: 9102, Tags: tags("billing-metrics_shop_svc_9102"), Health: ready},
		},
	}, {
		name: "two services on one pod port: the first by name keeps it",
		edit: func(p *Pod, _ *Namespace, svcs *[]Service) {
			(*svcs)[2].Spec.Selector = map[string]string{"app": "billing"} // billing-v1 now selects, port 80 -> 8080
		},
		want: []api.Inbound{
			{Port: 8080, ServicePort: 8080, Tags: tags("billing_shop_svc_80"), Health: ready},
			{Port: 9102, ServicePort: 9102, Tags: tags("billing-metrics_shop_svc_9102"), Health: ready},
		},
		skipped: []string{"service billing-v1 port 80: pod port 8080 already serves billing_shop_svc_80"},
	}, {
		name: "a Service's annotation names its single TCP port's service",
		edit: func(_ *Pod, _ *Namespace, svcs *[]Service) {
			(*svcs)[1].Metadata.Annotations = map[string]string{AnnotationService: "billing-metrics"}
			(*svcs)[0].Metadata.Annotations = map[string]string{AnnotationService: "billing"}
		},
		want: []api.Inbound{
			{Port: 8080, ServicePort: 8080, Tags: tags("billing_shop_svc_80"), Health: ready},
			{Port: 9102, ServicePort: 9102, Tags: tags("billing-metrics"), Health: ready},
		},
		skipped: []string{"service billing: annotation ursa.io/service ignored: it names a Service of one TCP port, this one has 2"},
	}, {
		name: "an invalid service annotation is ignored",
		edit: func(_ *Pod, _ *Namespace, svcs *[]Service) {
			(*svcs)[1].Metadata.Annotations = map[string]string{AnnotationService: "bad name!"}
		},
		want: []api.Inbound{
			{Port: 8080, ServicePort: 8080, Tags: tags("billing_shop_svc_80"), Health: ready},
			{Port: 9102, ServicePort: 9102, Tags: tags("billing-metrics_shop_svc_9102"), Health: ready},
		},
		skipped: []string{"service billing-metrics: annotation ursa.io/service ignored: value of"},
	}, {
		name: "no Service selects the pod: the workload's serviceless inbound, never an endpoint",
		edit: func(_ *Pod, _ *Namespace, svcs *[]Service) { *svcs = (*svcs)[2:] },
		want: []api.Inbound{
			{Port: ServicelessPort, ServicePort: ServicelessPort, Tags: tags("billing_shop_svc"), Health: &api.Health{}},
		},
	}, {
		name: "a pod without a controller is its own workload",
		edit: func(p *Pod, _ *Namespace, svcs *[]Service) {
			*svcs = nil
			p.Metadata.OwnerReferences = nil
			p.Metadata.Name = "debug"
		},
		want: []api.Inbound{
			{Port: ServicelessPort, ServicePort: ServicelessPort, Tags: tags("debug_shop_svc"), Health: &api.Health{}},
		},
	}, {
		name: "a service name over 63 characters is skipped, with the way out",
		edit: func(_ *Pod, _ *Namespace, svcs *[]Service) {
			(*svcs)[1].Metadata.Name = strings.Repeat("m", 60)
		},
		want: []api.Inbound{
			{Port: 8080, ServicePort: 8080, Tags: tags("billing_shop_svc_80"), Health: ready},
		},
		skipped: []string{"(name it with the annotation ursa.io/service)"},
	}, {
		name: "mesh from the pod's annotation",
		edit: func(p *Pod, ns *Namespace, _ *[]Service) {
			p.Metadata.Annotations[AnnotationMesh] = "payments"
			ns.Metadata.Labels[AnnotationMesh] = "other"
		},
		mesh: "payments",
		want: []api.Inbound{
			{Port: 8080, ServicePort: 8080, Tags: tags("billing_shop_svc_80"), Health: ready},
			{Port: 9102, ServicePort: 9102, Tags: tags("billing-metrics_shop_svc_9102"), Health: ready},
		},
	}, {
		name: "mesh from the namespace's label",
		edit: func(_ *Pod, ns *Namespace, _ *[]Service) { ns.Metadata.Labels[AnnotationMesh] = "other" },
		mesh: "other",
		want: []api.Inbound{
			{Port: 8080, ServicePort: 8080, Tags: tags("billing_shop_svc_80"), Health: ready},
			{Port: 9102, ServicePort: 9102, Tags: tags("billing-metrics_shop_svc_9102"), Health: ready},
		},
	}, {
		name:   "namespace not injected",
		edit:   func(_ *Pod, ns *Namespace, _ *[]Service) { delete(ns.Metadata.Labels, LabelSidecarInjection) },
		absent: "namespace shop is not labelled ursa.io/sidecar-injection=enabled",
	}, {
		name:   "pod opted out",
		edit:   func(p *Pod, _ *Namespace, _ *[]Service) { p.Metadata.Annotations[LabelSidecarInjection] = "disabled" },
		absent: "marked ursa.io/sidecar-injection=disabled",
	}, {
		// Created before its namespace was labelled, or on the node's
		// network: no sidecar, so no Dataplane (meshed callers would send
		// mTLS to a plain app).
		name:   "pod not injected",
		edit:   func(p *Pod, _ *Namespace, _ *[]Service) { delete(p.Metadata.Annotations, AnnotationInjected) },
		absent: "the pod has no sidecar",
	}, {
		name:   "no IP yet",
		edit:   func(p *Pod, _ *Namespace, _ *[]Service) { p.Status.PodIP = ""; p.Status.Phase = "Pending" },
		absent: "no IP yet",
	}, {
		name:   "terminated",
		edit:   func(p *Pod, _ *Namespace, _ *[]Service) { p.Status.Phase = "Succeeded" },
		absent: "terminated (phase Succeeded)",
	}, {
		name: "garbage pod IP",
		edit: func(p *Pod, _ *Namespace, _ *[]Service) { p.Status.PodIP = "10.244.1" },
		err:  `translate pod shop/billing-7c5d9f8b6d-x2x7q: status.podIP "10.244.1" is not an IP address`,
	}, {
		name: "invalid mesh annotation",
		edit: func(p *Pod, _ *Namespace, _ *[]Service) { p.Metadata.Annotations[AnnotationMesh] = "Payments_EU" },
		err:  `mesh "Payments_EU" (annotation ursa.io/mesh)`,
	}, {
		name: "wrong namespace",
		edit: func(_ *Pod, ns *Namespace, _ *[]Service) { ns.Metadata.Name = "other" },
		err:  `namespace given is "other"`,
	}, {
		name: "no name",
		edit: func(p *Pod, _ *Namespace, _ *[]Service) { p.Metadata.Name = "" },
		err:  "metadata.name and metadata.namespace are required",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod, ns, svcs := objects(t)
			if tt.edit != nil {
				tt.edit(pod, ns, &svcs)
			}
			res, err := Translate(pod, ns, svcs, "zone-k8s")
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want one containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.absent != "" {
				if res.Dataplane != nil || !strings.Contains(res.Absent, tt.absent) {
					t.Fatalf("got %+v, want no Dataplane because %q", res, tt.absent)
				}
				return
			}
			dp := res.Dataplane
			if dp == nil {
				t.Fatalf("no Dataplane: %s", res.Absent)
			}
			mesh := tt.mesh
			if mesh == "" {
				mesh = "default"
			}
			if dp.Type != "Dataplane" || dp.Mesh != mesh || dp.Name != pod.Metadata.Name+".shop" || dp.Networking.Address != "10.244.1.17" {
				t.Errorf("meta/address = %s %s/%s %s", dp.Type, dp.Mesh, dp.Name, dp.Networking.Address)
			}
			if !reflect.DeepEqual(dp.Networking.Inbound, tt.want) {
				t.Errorf("inbounds:\n got %+v\nwant %+v", dp.Networking.Inbound, tt.want)
			}
			if err := api.Validate(dp); err != nil {
				t.Error(err)
			}
			for _, s := range tt.skipped {
				found := false
				for _, got := range res.Skipped {
					found = found || strings.Contains(got, s)
				}
				if !found {
					t.Errorf("skipped = %q, want one containing %q", res.Skipped, s)
				}
			}
		})
	}
}

// TestTranslateNoMutation: the translation reads its inputs only, and its
// Dataplane shares no map with them or across inbounds.
func TestTranslateNoMutation(t *testing.T) {
	pod, ns, svcs := objects(t)
	pod2, ns2, svcs2 := objects(t)
	res, err := Translate(pod, ns, svcs, "zone-k8s")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(pod, pod2) || !reflect.DeepEqual(ns, ns2) || !reflect.DeepEqual(svcs, svcs2) {
		t.Fatal("Translate changed its inputs")
	}
	in := res.Dataplane.Networking.Inbound
	in[0].Tags["x"] = "y"
	if _, ok := in[1].Tags["x"]; ok {
		t.Fatal("inbounds share their tags")
	}
	if _, ok := pod.Metadata.Labels["x"]; ok {
		t.Fatal("an inbound shares the pod's labels")
	}
}

func TestIntOrString(t *testing.T) {
	for in, want := range map[string]IntOrString{
		`8080`: {Int: 8080}, `"http"`: {Str: "http", IsStr: true}, `"8080"`: {Str: "8080", IsStr: true}, `null`: {},
	} {
		var got IntOrString
		if err := got.UnmarshalJSON([]byte(in)); err != nil || got != want {
			t.Errorf("%s: got %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{`8080.5`, `true`, `{}`, `1e400`} {
		var got IntOrString
		if err := got.UnmarshalJSON([]byte(in)); err == nil || !strings.Contains(err.Error(), "targetPort") {
			t.Errorf("%s: err = %v, want a targetPort error", in, err)
		}
	}
	// null is an absent target port: the Service's port.
	if s, err := DecodeService([]byte(`{"metadata":{"name":"s"},"spec":{"ports":[{"port":80,"targetPort":null}]}}`)); err != nil || !s.Spec.Ports[0].TargetPort.IsZero() {
		t.Errorf("targetPort null: %+v, %v; want absent", s, err)
	}
	if _, err := DecodeService([]byte(`{"metadata":{"name":"s"},"spec":{"ports":[{"port":80,"targetPort":[1]}]}}`)); err == nil ||
		!strings.Contains(err.Error(), "decode service") || !strings.Contains(err.Error(), "targetPort") {
		t.Errorf("err = %v, want decode service ... targetPort", err)
	}
}
