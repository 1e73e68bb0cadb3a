package kubernetes

import (
	"slices"
	"strconv"
	"strings"
	"testing"
)

func injectAndDecode(t *testing.T, podDoc string) map[string]any {
	t.Helper()
	ops, err := testInjector().patch(testPod(t, podDoc), enabledNS)
	if err != nil {
		t.Fatal(err)
	}
	return applyAdds(t, []byte(podDoc), ops)
}

// redirectedPorts reads ursa-init's command: the ports whose inbound TCP
// the pod's rules send to the sidecar, of those in ports (every port with
// --redirect-all-inbound, but --exclude-inbound-ports'; else
// --inbound-ports').
func redirectedPorts(t *testing.T, pod map[string]any, ports ...int) []int {
	t.Helper()
	spec := pod["spec"].(map[string]any)
	list := func(s string) []int {
		var out []int
		for _, p := range strings.Split(s, ",") {
			n, _ := strconv.Atoi(p)
			out = append(out, n)
		}
		return out
	}
	for _, c := range spec["initContainers"].([]any) {
		c := c.(map[string]any)
		if c["name"] != InitName {
			continue
		}
		cmd := toStrings(c["command"].([]any))
		var excluded, listed []int
		for i, a := range cmd {
			if a == "--exclude-inbound-ports" && i+1 < len(cmd) {
				excluded = list(cmd[i+1])
			}
			if a == "--inbound-ports" && i+1 < len(cmd) {
				listed = list(cmd[i+1])
			}
		}
		all := slices.Contains(cmd, "--redirect-all-inbound")
		var out []int
		for _, p := range ports {
			if all && !slices.Contains(excluded, p) || slices.Contains(listed, p) {
				out = append(out, p)
			}
		}
		return out
	}
	t.Fatal("no ursa-init container")
	return nil
}

// TestReviewK8sGRPCProbeOfRedirectedPortBreaksPod: a gRPC server with a
// gRPC readiness probe (GA since Kubernetes 1.27) on its declared port.
// That port is redirected to the sidecar's inbound listener, which takes
// mTLS only, and the injector leaves gRPC probes as they are: the kubelet's
// plaintext gRPC health check fails for ever, the pod never becomes Ready,
// and the rollout stalls. Istio rewrites gRPC probes to the agent
// (/app-health/...), Kuma's application probe proxy serves gRPC too.
func TestReviewK8sGRPCProbeOfRedirectedPortBreaksPod(t *testing.T) {
	const doc = `{"metadata":{"name":"api-1","namespace":"shop","labels":{"app":"api"}},
 "spec":{"containers":[{"name":"api","image":"api:1","ports":[{"containerPort":9000,"name":"grpc"}],
   "readinessProbe":{"grpc":{"port":9000},"periodSeconds":5},
   "livenessProbe":{"grpc":{"port":9000,"service":"liveness"},"periodSeconds":10}}]}}`
	stored := injectAndDecode(t, doc)
	redirected := redirectedPorts(t, stored, 9000)
	for _, c := range stored["spec"].(map[string]any)["containers"].([]any) {
		c := c.(map[string]any)
		if c["name"] == SidecarName {
			continue
		}
		for _, kind := range probeKinds {
			p, _ := c[kind].(map[string]any)
			g, ok := p["grpc"].(map[string]any)
			if !ok {
				continue
			}
			port := int(g["port"].(float64))
			if slices.Contains(redirected, port) {
				t.Errorf("container %s: %s is a plaintext gRPC health check of port %d, which ursa-init redirects (%v) to the mTLS-only inbound listener: the probe always fails",
					c["name"], kind, port, redirected)
			}
		}
	}
}

// TestInjectRewritesGRPCProbes: a gRPC probe of a redirected port is made
// by the sidecar (GET :9901/probes/grpc:PORT[/SERVICE]), which --app-probes
// lists.
func TestInjectRewritesGRPCProbes(t *testing.T) {
	const doc = `{"metadata":{"name":"api-1","namespace":"shop"},
 "spec":{"containers":[{"name":"api","image":"api:1","ports":[{"containerPort":9000,"name":"grpc"}],
   "readinessProbe":{"grpc":{"port":9000},"periodSeconds":5},
   "livenessProbe":{"grpc":{"port":9000,"service":"liveness"},"periodSeconds":10}}]}}`
	stored := injectAndDecode(t, doc)
	var api, sidecar map[string]any
	for _, c := range stored["spec"].(map[string]any)["containers"].([]any) {
		switch c := c.(map[string]any); c["name"] {
		case "api":
			api = c
		case SidecarName:
			sidecar = c
		}
	}
	for kind, want := range map[string]string{"readinessProbe": ProbesPath + "grpc:9000", "livenessProbe": ProbesPath + "grpc:9000/liveness"} {
		p := api[kind].(map[string]any)
		get, _ := p["httpGet"].(map[string]any)
		if get["path"] != want || p["grpc"] != nil || p["periodSeconds"] == nil {
			t.Errorf("%s: %v, want GET %s on the admin port", kind, p, want)
		}
	}
	if cmd := strings.Join(toStrings(sidecar["command"].([]any)), " "); !strings.Contains(cmd, "--app-probes grpc:9000/liveness,grpc:9000 ") {
		t.Errorf("the sidecar's command: %s", cmd)
	}
}

func toStrings(in []any) []string {
	out := make([]string, len(in))
	for i, v := range in {
		out[i], _ = v.(string)
	}
	return out
}
