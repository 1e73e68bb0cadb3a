package kubernetes

import (
	"slices"
	"testing"

	"github.com/ursamesh/ursa/pkg/proxy/tproxy"
)

// TestReviewInboundOfUnredirectedPort: the injected rules
// (--redirect-all-inbound) never redirect SSH's port 22, nor the ports of
// ursa.io/exclude-inbound-ports; Translate still makes an inbound of a
// Service's targetPort that is one of them. The Dataplane then advertises
// an mTLS inbound (TrafficPermissions, ready by the kubelet's probe) that
// no sidecar fronts: meshed callers' mTLS reaches the plain app and fails,
// and any caller reaches the app in plaintext around the TrafficPermissions
// the inbound claims. (Before this change a declared port 22 was
// redirected like any other.) The very bug aabd245 fixes ("bypassed the
// sidecar while its inbound showed ready"), back for these ports.
func TestReviewInboundOfUnredirectedPort(t *testing.T) {
	pod, ns, svcs := objects(t)
	if pod.Metadata.Annotations == nil {
		pod.Metadata.Annotations = map[string]string{}
	}
	// The metrics Service's port (9102) is excluded by the pod's annotation,
	// and a Service "git" sends its port 22 to the pod's 22.
	pod.Metadata.Annotations[AnnotationExcludeInboundPorts] = "9102"
	git := svcs[0]
	git.Metadata.Name, git.Metadata.UID = "git", "g1"
	git.Spec.Ports = []ServicePort{{Name: "ssh", Port: 22, TargetPort: IntOrString{Int: 22}}}
	svcs = append(svcs, git)

	res, err := Translate(pod, ns, svcs, "zone-k8s")
	if err != nil || res.Dataplane == nil {
		t.Fatalf("translate: %v %+v", err, res)
	}
	excluded, _ := tproxy.ParsePorts(pod.Metadata.Annotations[AnnotationExcludeInboundPorts])
	for _, in := range res.Dataplane.Networking.Inbound {
		if in.Port == 22 || slices.Contains(excluded, in.Port) {
			t.Errorf("the Dataplane has an inbound on port %d (service %s, ready %v), which the injected rules leave to the app (22 always, %v by the annotation): its callers reach the app without the sidecar",
				in.Port, in.Tags["ursa.io/service"], in.Health.Ready, excluded)
		}
	}
}
