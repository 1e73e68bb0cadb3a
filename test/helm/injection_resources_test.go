package helm

import (
	"os"
	"path/filepath"
	"testing"
)

// TestInjectionResourcesNone sets the injected sidecar's resources to
// what values.yaml documents as "The sidecar's; empty: none." — no limits (a
// common choice: no CPU throttling of the proxy), or no resources at all —
// the ways Helm lets a user empty a map of the defaults (a values file with
// null, or --set ...=null; `resources: {}` is merged with the defaults and
// empties nothing). The chart must render, and the zone CP must be given no
// limit for the sidecar (ursa-cp takes an empty limit as none).
func TestInjectionResourcesNone(t *testing.T) {
	for _, tc := range []struct {
		name, values string
		noFlags      []string
	}{
		{"no limits", "injection:\n  resources:\n    limits: null\n",
			[]string{"--kubernetes-injection-resources-limits-cpu=1", "--kubernetes-injection-resources-limits-memory=512Mi"}},
		{"no resources", "injection:\n  resources: null\n",
			[]string{"--kubernetes-injection-resources-limits-cpu=1", "--kubernetes-injection-resources-limits-memory=512Mi",
				"--kubernetes-injection-resources-requests-cpu=50m", "--kubernetes-injection-resources-requests-memory=64Mi"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "values.yaml")
			if err := os.WriteFile(f, []byte(tc.values), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := helm(t, "template", "ursa", chartDir, "--namespace", "ursa-system", "--set", "zone.name=zone-1", "-f", f)
			if err != nil {
				t.Fatalf("helm template -f values.yaml with\n%s: %v\n%s", tc.values, err, out)
			}
			args := list(containers(parse(t, out))["ursa-control-plane/control-plane"]["args"])
			for _, a := range args {
				for _, bad := range tc.noFlags {
					if a == bad {
						t.Errorf("with\n%sthe CP is still started with %s", tc.values, bad)
					}
				}
			}
		})
	}
}

// TestSourceRangesOnlyWithLoadBalancer: loadBalancerSourceRanges goes on the
// control plane's Service only when it is a LoadBalancer, as values.yaml
// says and as the ingress's Service does: on another type it does nothing,
// and reads as a protection that is not there.
func TestSourceRangesOnlyWithLoadBalancer(t *testing.T) {
	for typ, want := range map[string]bool{"ClusterIP": false, "LoadBalancer": true} {
		out, err := helm(t, "template", "ursa", chartDir, "--namespace", "ursa-system", "--set", "zone.name=zone-1",
			"--set", "controlPlane.service.type="+typ, "--set", "controlPlane.service.loadBalancerSourceRanges={10.0.0.0/8}")
		if err != nil {
			t.Fatalf("%s: %v\n%s", typ, err, out)
		}
		for _, o := range parse(t, out) {
			if o.kind() == "Service" && o.name() == "ursa-control-plane" {
				if got := get(o, "spec", "loadBalancerSourceRanges") != nil; got != want {
					t.Errorf("a %s Service: loadBalancerSourceRanges rendered %v, want %v", typ, got, want)
				}
			}
		}
	}
}

// TestIngressReplicasSpread: with more than one replica the zone ingress's
// pods prefer different nodes and a PodDisruptionBudget lets a drain take
// one at a time, as the control plane's; with one, neither.
func TestIngressReplicasSpread(t *testing.T) {
	for replicas, want := range map[string]bool{"1": false, "3": true} {
		out, err := helm(t, "template", "ursa", chartDir, "--namespace", "ursa-system", "--set", "zone.name=zone-1",
			"--set", "ingress.enabled=true", "--set", "ingress.replicas="+replicas)
		if err != nil {
			t.Fatalf("replicas %s: %v\n%s", replicas, err, out)
		}
		pdb, spread := false, false
		for _, o := range parse(t, out) {
			switch {
			case o.kind() == "PodDisruptionBudget" && o.name() == "ursa-ingress":
				pdb = get(o, "spec", "maxUnavailable") != nil
			case o.kind() == "Deployment" && o.name() == "ursa-ingress":
				spread = get(o, "spec", "template", "spec", "affinity", "podAntiAffinity") != nil
			}
		}
		if pdb != want || spread != want {
			t.Errorf("ingress.replicas=%s: PodDisruptionBudget %v, anti-affinity %v; want both %v", replicas, pdb, spread, want)
		}
	}
}
