package kubernetes

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/config"
	"github.com/ursamesh/ursa/pkg/proxy/tproxy"
)

// The injected pod's layout. The hybrid e2e runs these containers' commands
// as a kubelet would, so this comment is their contract:
//
// A pod admitted in a namespace labelled ursa.io/sidecar-injection=enabled,
// not annotated ursa.io/sidecar-injection=disabled, not on the host's
// network, and not already injected gets:
//
//   - annotation ursa.io/sidecar-injected: "true" (what makes injection
//     idempotent, with the container names below);
//   - volume "ursa-token": a projected service-account token, audience
//     TokenAudience ("ursa"), expirationSeconds from
//     kubernetes.injection.tokenExpiration (10m), at path "token";
//   - init container "ursa-init", appended after the pod's own, running as
//     root with NET_ADMIN and NET_RAW (every other capability dropped):
//     command ["ursa-dp", "install-transparent-proxy",
//     "--redirect-all-inbound", "--admin-addr", ":9901",
//     "--exclude-inbound-ports", "E,F" (only with the annotation below),
//     "--exclude-outbound-uids", "5678", "--sidecar-uid", "5678"]. It
//     installs the redirection with ursa-dp run's default ports (outbound
//     15001, inbound 15006, DNS 15053, the DNS of the pod's
//     /etc/resolv.conf resolvers) and exits;
//   - container "ursa-sidecar", first in spec.containers, as UID/GID 5678
//     (SidecarUID), non-root, no capabilities, read-only root file system:
//     command ["ursa-dp", "run",
//     "--cp-address", <kubernetes.injection.cpAddress>,
//     "--dataplane-name", "$(POD_NAME).$(POD_NAMESPACE)",
//     "--mesh", <the pod's mesh: annotation ursa.io/mesh on the pod, else on
//     its namespace (annotation or label), else "default">,
//     "--token-file", "/var/run/secrets/ursa.io/token/token",
//     "--transparent-proxy", "--transparent-proxy-installed",
//     "--redirect-all-inbound",
//     "--exclude-inbound-ports", "E,F" (as the init container's),
//     "--app-probes", "P/path,...", "--app-probe-host", "$(POD_IP)" (when
//     a probe is rewritten, below),
//     "--admin-addr", ":9901",
//     "--drain-time", D (sidecarDrainTime: the pod's
//     terminationGracePeriodSeconds, 30 s when unset, less 5 s, so that the
//     sidecar ends its drain and exits before the kubelet's SIGKILL),
//     and, not a native sidecar, "--drain-exit-when-idle=false" (it gets
//     SIGTERM with the application, whose shutdown calls it serves)];
//     env POD_NAME, POD_NAMESPACE and POD_IP (downward API), URSA_CA_CERT (the PEM
//     of the CA of the zone CP's xDS certificate; absent when the zone
//     serves xDS without TLS); volume mount ursa-token read-only at
//     /var/run/secrets/ursa.io/token; readiness probe GET :9901/ready
//     (every 5 s), liveness probe GET :9901/ready (after 60 s, every 10 s,
//     6 failures); resources from kubernetes.injection.resources.*; port
//     9901 named ursa-admin.
//
// Inbound TCP to every port of the pod, declared as a container port or
// not, is redirected to the sidecar, as Istio and Kuma do: a port an
// inbound of its Dataplane takes (a Service's targetPort) gets mTLS and
// TrafficPermissions, any other (a metrics port) is passed through to the
// app from 127.0.0.6. Not redirected: the sidecar's own ports (9901,
// 15001, 15006, 15053), which no container may declare (such a pod is
// refused), SSH's (22, as Istio leaves it), and E,F, the ports of the pod's annotation
// ursa.io/exclude-inbound-ports ("E,F"; a bad list refuses the pod), which
// reach the app directly, around the sidecar.
// An app container's httpGet, tcpSocket or grpc liveness, readiness or
// startup probe of a redirected port is replaced (JSON Patch "replace",
// before the sidecar is added) by the same probe as GET
// :9901/probes/PORT/PATH (HTTP), /probes/https:PORT/PATH (HTTPS),
// /probes/tcp:PORT (TCP) or /probes/grpc:PORT[/SERVICE], which the sidecar
// makes of the pod's IP: the kubelet's own could otherwise reach an
// inbound's chain, which takes mTLS only (and accepts TCP whether the app
// is up or not). exec probes are left.
const (
	// SidecarName and InitName are the injected containers' names.
	SidecarName = "ursa-sidecar"
	InitName    = "ursa-init"
	// TokenVolume is the projected token's volume, mounted at TokenDir.
	TokenVolume = "ursa-token"
	TokenDir    = "/var/run/secrets/ursa.io/token"
	// TokenAudience is the audience of the sidecar's token; the zone CP's
	// TokenReview asks for it, so a token for another audience (the
	// pod's default API token) is refused.
	TokenAudience = "ursa"
	// SidecarUID is the sidecar's user and group: the redirection lets its
	// traffic through by this UID (it has no NET_ADMIN to mark sockets).
	SidecarUID = 5678
	// AdminPort is the sidecar's /ready and /metrics port.
	AdminPort = 9901
	// AnnotationInjected marks an injected pod.
	AnnotationInjected = "ursa.io/sidecar-injected"
	// AnnotationScrape, AnnotationScrapePort and AnnotationScrapePath
	// point Prometheus's Kubernetes discovery at the sidecar's /metrics.
	AnnotationScrape     = "prometheus.io/scrape"
	AnnotationScrapePort = "prometheus.io/port"
	AnnotationScrapePath = "prometheus.io/path"
	// AnnotationExcludeInboundPorts lists the pod's ports ("8081,9000")
	// whose inbound TCP is not redirected to the sidecar (Kuma's
	// traffic.kuma.io/exclude-inbound-ports, Istio's
	// traffic.sidecar.istio.io/excludeInboundPorts).
	AnnotationExcludeInboundPorts = "ursa.io/exclude-inbound-ports"
)

// sidecarPorts are the ports the sidecar binds in the pod's network
// namespace (admin, outbound, inbound, DNS).
var sidecarPorts = []int{AdminPort, 15001, 15006, 15053}

// InjectionConfig is kubernetes.injection.* of the zone's configuration.
type InjectionConfig struct {
	Image     string `json:"image" usage:"image of the injected ursa-dp sidecar and init container"`
	CPAddress string `json:"cpAddress" usage:"xDS address the injected sidecars reach the zone CP at (default grpcs://ursa-control-plane.<kubernetes.systemNamespace>.svc:5678)"`
	// TokenExpiration is the projected token's lifetime; the kubelet
	// renews it at 80% of it.
	TokenExpiration config.Duration `json:"tokenExpiration" usage:"lifetime of the sidecars' projected service-account tokens (at least 10m)"`
	// NativeSidecar is auto, true or false: whether the sidecar is a
	// native one (Injector.NativeSidecar).
	NativeSidecar string `json:"nativeSidecar" usage:"inject the sidecar as a native sidecar (an init container with restartPolicy Always): auto (when the API server is 1.29 or later), true or false (false while kubelets older than 1.29 remain: they would wait on it for ever)"`
	Resources     struct {
		Requests struct {
			CPU    string `json:"cpu" usage:"the sidecar's CPU request"`
			Memory string `json:"memory" usage:"the sidecar's memory request"`
		} `json:"requests"`
		Limits struct {
			CPU    string `json:"cpu" usage:"the sidecar's CPU limit (empty: none)"`
			Memory string `json:"memory" usage:"the sidecar's memory limit (empty: none)"`
		} `json:"limits"`
	} `json:"resources"`
}

// DefaultInjectionConfig returns the defaults; image is the sidecar's image.
func DefaultInjectionConfig(image string) InjectionConfig {
	var c InjectionConfig
	c.Image = image
	c.TokenExpiration = config.Duration{Duration: 10 * time.Minute}
	c.NativeSidecar = "auto"
	c.Resources.Requests.CPU, c.Resources.Requests.Memory = "50m", "64Mi"
	c.Resources.Limits.CPU, c.Resources.Limits.Memory = "1", "512Mi"
	return c
}

// quantity is a Kubernetes resource quantity, as far as Ursa checks one.
var quantity = regexp.MustCompile(`^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|e[0-9]+)?$`)

// Validate reports every setting that cannot work, naming its key under
// kubernetes.injection.
func (c InjectionConfig) Validate() error {
	var errs []error
	if c.Image == "" || strings.ContainsAny(c.Image, " \t\n") {
		errs = append(errs, fmt.Errorf("kubernetes.injection.image: %q is not an image reference", c.Image))
	}
	if c.CPAddress != "" && !strings.HasPrefix(c.CPAddress, "grpcs://") && !strings.HasPrefix(c.CPAddress, "grpc://") {
		errs = append(errs, fmt.Errorf("kubernetes.injection.cpAddress: %q is not grpcs://HOST:PORT", c.CPAddress))
	}
	if c.NativeSidecar != "auto" && c.NativeSidecar != "true" && c.NativeSidecar != "false" {
		errs = append(errs, fmt.Errorf("kubernetes.injection.nativeSidecar: %q is not auto, true or false", c.NativeSidecar))
	}
	if d := c.TokenExpiration.Duration; d < 10*time.Minute || d > 48*time.Hour {
		errs = append(errs, fmt.Errorf("kubernetes.injection.tokenExpiration: %s is out of range; Kubernetes takes 10m to 48h", c.TokenExpiration))
	}
	for key, q := range map[string]string{
		"resources.requests.cpu": c.Resources.Requests.CPU, "resources.requests.memory": c.Resources.Requests.Memory,
		"resources.limits.cpu": c.Resources.Limits.CPU, "resources.limits.memory": c.Resources.Limits.Memory,
	} {
		if q != "" && !quantity.MatchString(q) {
			errs = append(errs, fmt.Errorf("kubernetes.injection.%s: %q is not a quantity such as 100m or 128Mi", key, q))
		}
	}
	slices.SortFunc(errs, func(a, b error) int { return strings.Compare(a.Error(), b.Error()) })
	return errors.Join(errs...)
}

// Injector is the mutating webhook that adds the sidecar to pods.
type Injector struct {
	Config InjectionConfig
	// CPAddress is the sidecars' --cp-address (Config.CPAddress or its
	// default).
	CPAddress string
	// CAPEM is the CA of the zone CP's xDS certificate, given to sidecars
	// as URSA_CA_CERT; empty when xDS has no TLS.
	CAPEM []byte
	// Namespace returns a namespace, for its mesh annotation or label.
	Namespace func(ctx context.Context, name string) (*Namespace, error)
	// NativeSidecar injects the sidecar as Kubernetes' native sidecar (an
	// init container with restartPolicy Always, Kubernetes 1.29 and
	// later), as Istio and Kuma do: started, and ready, before the
	// application and the pod's own init containers, stopped after them,
	// and no hold on a Job's completion. Without it (older clusters), the
	// first of the pod's containers.
	NativeSidecar bool
}

// injectPod is the part of a Pod injection reads.
type injectPod struct {
	Metadata ObjectMeta `json:"metadata"`
	Spec     struct {
		HostNetwork bool `json:"hostNetwork,omitempty"`
		// TerminationGracePeriodSeconds bounds the sidecar's drain.
		TerminationGracePeriodSeconds *int64            `json:"terminationGracePeriodSeconds,omitempty"`
		Containers                    []Container       `json:"containers"`
		InitContainers                []Container       `json:"initContainers,omitempty"`
		Volumes                       []json.RawMessage `json:"volumes,omitempty"`
	} `json:"spec"`
	// probes are the containers' probes, in their order: kind
	// (readinessProbe, ...) → probe.
	probes []map[string]map[string]any
}

// probeKinds are the probes the kubelet makes of a container.
var probeKinds = []string{"livenessProbe", "readinessProbe", "startupProbe"}

// decodeInjectPod decodes what injection reads of a pod.
func decodeInjectPod(b []byte) (*injectPod, error) {
	var pod injectPod
	if err := json.Unmarshal(b, &pod); err != nil {
		return nil, err
	}
	var raw struct {
		Spec struct {
			Containers []map[string]json.RawMessage `json:"containers"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, err
	}
	for _, c := range raw.Spec.Containers {
		probes := map[string]map[string]any{}
		for _, k := range probeKinds {
			var p map[string]any
			if json.Unmarshal(c[k], &p) == nil && p != nil {
				probes[k] = p
			}
		}
		pod.probes = append(pod.probes, probes)
	}
	return &pod, nil
}

// Review answers a Pod admission request: the JSON Patch that injects the
// sidecar, nothing for a pod that is not to be injected, a refusal for a
// pod that cannot be.
func (in *Injector) Review(r *http.Request, req *AdmissionRequest) (*AdmissionResponse, error) {
	if req.Kind.Kind != "Pod" || req.Operation != "CREATE" {
		return Allow(req.UID, nil)
	}
	pod, err := decodeInjectPod(req.Object)
	if err != nil {
		return Deny(req.UID, http.StatusBadRequest, "BadRequest", "ursa sidecar injection: the pod does not decode: "+err.Error()), nil
	}
	if req.Namespace != "" { // the request's is authoritative; a create may leave the pod's empty
		pod.Metadata.Namespace = req.Namespace
	}
	ns := &Namespace{Metadata: ObjectMeta{Name: pod.Metadata.Namespace}}
	if in.Namespace != nil {
		got, err := in.Namespace(r.Context(), pod.Metadata.Namespace)
		if err != nil {
			return nil, fmt.Errorf("sidecar injection: namespace %s: %w", pod.Metadata.Namespace, err)
		}
		ns = got
	}
	patch, err := in.patch(pod, ns)
	if err != nil {
		return Deny(req.UID, http.StatusUnprocessableEntity, "Invalid", "ursa sidecar injection: "+err.Error()), nil
	}
	return Allow(req.UID, patch)
}

// saysPrometheus reports whether annotations say anything of Prometheus's
// discovery (prometheus.io/*).
func saysPrometheus(annotations map[string]string) bool {
	for k := range annotations {
		if strings.HasPrefix(k, "prometheus.io/") {
			return true
		}
	}
	return false
}

// patch returns the operations that inject pod, which lives in ns; none when
// it is not to be injected or already is.
func (in *Injector) patch(pod *injectPod, ns *Namespace) ([]PatchOp, error) {
	switch {
	case ns.Metadata.Labels[LabelSidecarInjection] != "enabled",
		pod.Metadata.Annotations[LabelSidecarInjection] == "disabled", pod.Metadata.Labels[LabelSidecarInjection] == "disabled",
		pod.Metadata.Annotations[AnnotationInjected] == "true",
		pod.Spec.HostNetwork: // its rules would be the node's
		return nil, nil
	}
	for _, c := range slices.Concat(pod.Spec.Containers, pod.Spec.InitContainers) {
		if c.Name == SidecarName || c.Name == InitName {
			return nil, nil
		}
	}
	mesh := meshOf(&Pod{Metadata: pod.Metadata}, ns)
	if msg := api.CheckName(mesh); msg != "" {
		return nil, fmt.Errorf("mesh %q (annotation %s): %s", mesh, AnnotationMesh, msg)
	}
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if p.Protocol != "" && p.Protocol != "TCP" {
				continue
			}
			if slices.Contains(sidecarPorts, p.ContainerPort) {
				return nil, fmt.Errorf("container %s declares port %d, which the ursa-dp sidecar binds (%s); use another port, or annotate the pod %s=disabled",
					c.Name, p.ContainerPort, joinInts(sidecarPorts), LabelSidecarInjection)
			}
		}
	}
	excluded, err := tproxy.ParsePorts(pod.Metadata.Annotations[AnnotationExcludeInboundPorts])
	if err != nil {
		return nil, fmt.Errorf("annotation %s: %w", AnnotationExcludeInboundPorts, err)
	}
	slices.Sort(excluded)
	excluded = slices.Compact(excluded)
	redirected := func(port int) bool {
		return port >= 1 && port <= 65535 && port != 22 && !slices.Contains(sidecarPorts, port) && !slices.Contains(excluded, port)
	}
	// Before the sidecar goes in at index 0: the containers' indexes are
	// the pod's own.
	ops, probes := rewriteProbes(pod, redirected)
	// The mesh goes on the pod too: its sidecar runs --mesh, so the pod is
	// in that mesh for its life, whatever its namespace says later (as
	// Kuma pins kuma.io/mesh on the pods it injects).
	pinned := map[string]string{AnnotationInjected: "true", AnnotationMesh: mesh}
	keys := []string{AnnotationInjected, AnnotationMesh}
	// Prometheus's usual Kubernetes discovery (the prometheus.io/*
	// annotations) scrapes the sidecar's /metrics, as Istio's injected pods
	// are; a pod that says anything of prometheus.io/ itself (its app's own
	// metrics, or scrape "false") keeps what it says.
	if !saysPrometheus(pod.Metadata.Annotations) {
		maps.Copy(pinned, map[string]string{AnnotationScrape: "true", AnnotationScrapePort: strconv.Itoa(AdminPort), AnnotationScrapePath: "/metrics"})
		keys = append(keys, AnnotationScrape, AnnotationScrapePort, AnnotationScrapePath)
	}
	if pod.Metadata.Annotations == nil {
		ops = append(ops, PatchOp{Op: "add", Path: "/metadata/annotations", Value: pinned})
	} else {
		for _, k := range keys {
			if k == AnnotationMesh && pod.Metadata.Annotations[k] != "" {
				continue // the pod's own
			}
			ops = append(ops, PatchOp{Op: "add", Path: "/metadata/annotations/" + pointerEscape(k), Value: pinned[k]})
		}
	}
	vol := in.tokenVolume()
	if pod.Spec.Volumes == nil {
		ops = append(ops, PatchOp{Op: "add", Path: "/spec/volumes", Value: []any{vol}})
	} else {
		ops = append(ops, PatchOp{Op: "add", Path: "/spec/volumes/-", Value: vol})
	}
	initC, sidecar := in.initContainer(excluded), in.sidecar(mesh, excluded, probes, sidecarDrainTime(pod.Spec.TerminationGracePeriodSeconds))
	if !in.NativeSidecar {
		if pod.Spec.InitContainers == nil {
			ops = append(ops, PatchOp{Op: "add", Path: "/spec/initContainers", Value: []any{initC}})
		} else {
			ops = append(ops, PatchOp{Op: "add", Path: "/spec/initContainers/-", Value: initC})
		}
		return append(ops, PatchOp{Op: "add", Path: "/spec/containers/0", Value: sidecar}), nil
	}
	// The rules, then the sidecar (ready before what follows starts), then
	// the pod's own init containers, which reach the mesh as the
	// application does.
	sidecar["restartPolicy"] = "Always"
	sidecar["startupProbe"] = obj{"httpGet": obj{"path": "/ready", "port": AdminPort}, "periodSeconds": 1, "failureThreshold": 600}
	if pod.Spec.InitContainers == nil {
		return append(ops, PatchOp{Op: "add", Path: "/spec/initContainers", Value: []any{initC, sidecar}}), nil
	}
	return append(ops, PatchOp{Op: "add", Path: "/spec/initContainers/0", Value: sidecar},
		PatchOp{Op: "add", Path: "/spec/initContainers/0", Value: initC}), nil
}

// sidecarDrainTime is the --drain-time of the sidecar of a pod whose
// terminationGracePeriodSeconds is grace (nil: Kubernetes' default, 30):
// the grace less 5 s for the rest of the shutdown, but at least half of it,
// so that the drain ends, and the sidecar exits by itself, before the
// kubelet's SIGKILL. A native sidecar gets SIGTERM once the application's
// containers have exited (the kubelet stops sidecars last, in reverse
// order), so the application makes its last outbound calls through it, and
// its drain then only lets the inbound connections still open end. A
// sidecar among the containers gets SIGTERM with them: it stops taking
// inbound connections while the application finishes what it has, and
// keeps the outbound serving it.
func sidecarDrainTime(grace *int64) time.Duration {
	g := int64(30)
	if grace != nil {
		// A grace of centuries would overflow a Duration.
		g = min(max(*grace, 0), int64(math.MaxInt64/time.Second))
	}
	return time.Duration(max(g-5, g/2)) * time.Second
}

// NativeSidecars says whether a cluster of the API server version (as
// /version gives major and minor: "1", "29+") runs native sidecars
// (Kubernetes 1.29 and later, where they are on by default).
func NativeSidecars(major, minor string) bool {
	ma, err1 := strconv.Atoi(major)
	mi, err2 := strconv.Atoi(strings.TrimRight(minor, "+"))
	return err1 == nil && err2 == nil && (ma > 1 || ma == 1 && mi >= 29)
}

// ProbesPath prefixes the sidecar's admin paths that make an app's probes
// for the kubelet: GET /probes/PORT/PATH is GET http://POD_IP:PORT/PATH,
// /probes/https:PORT/PATH the same over TLS, /probes/tcp:PORT a TCP
// connection, for the probes --app-probes lists alone.
const ProbesPath = "/probes/"

// rewriteProbes points the app's HTTP, HTTPS, TCP and gRPC probes of
// redirected ports at the sidecar's admin port: the kubelet's plain HTTP or
// TLS to a redirected port that an inbound takes would reach the sidecar's
// inbound listener, which takes mTLS only there, and its TCP connection
// would be accepted whether the app is up or not. (Which ports inbounds
// take, the Services say, later: every redirected port's probe is made by
// the sidecar.) It returns the replace operations and the probes the
// sidecar is to serve (--app-probes).
func rewriteProbes(pod *injectPod, redirected func(port int) bool) ([]PatchOp, []string) {
	var ops []PatchOp
	var served []string
	for i, c := range pod.Spec.Containers {
		if i >= len(pod.probes) {
			break
		}
		for _, kind := range probeKinds {
			probe := pod.probes[i][kind]
			var pair string
			var headers any
			if get, ok := probe["httpGet"].(map[string]any); ok {
				port := probePort(get["port"], c.Ports)
				path, _ := get["path"].(string)
				if !strings.HasPrefix(path, "/") {
					path = "/" + path
				}
				if !redirected(port) || strings.ContainsAny(path, ", ") {
					continue // not redirected, or not a path --app-probes can list
				}
				pair = strconv.Itoa(port) + path
				if scheme, _ := get["scheme"].(string); scheme == "HTTPS" {
					pair = "https:" + pair
				}
				headers = get["httpHeaders"]
			} else if tcp, ok := probe["tcpSocket"].(map[string]any); ok {
				// The sidecar's inbound listener would accept the
				// connection whether the app is up or not.
				port := probePort(tcp["port"], c.Ports)
				if !redirected(port) {
					continue
				}
				pair = "tcp:" + strconv.Itoa(port)
			} else if g, ok := probe["grpc"].(map[string]any); ok {
				// The kubelet's plaintext gRPC health check would reach
				// the mTLS-only inbound listener: the sidecar makes it.
				port := probePort(g["port"], c.Ports)
				service, _ := g["service"].(string)
				if !redirected(port) || strings.ContainsAny(service, ", /?#%") {
					continue
				}
				pair = "grpc:" + strconv.Itoa(port)
				if service != "" {
					pair += "/" + service
				}
			} else {
				continue // exec runs in the container
			}
			if !slices.Contains(served, pair) {
				served = append(served, pair)
			}
			rewritten := map[string]any{}
			for k, v := range probe {
				if k != "tcpSocket" && k != "grpc" {
					rewritten[k] = v
				}
			}
			newGet := map[string]any{"path": ProbesPath + pair, "port": AdminPort, "scheme": "HTTP"}
			if headers != nil {
				newGet["httpHeaders"] = headers
			}
			rewritten["httpGet"] = newGet
			ops = append(ops, PatchOp{Op: "replace", Path: fmt.Sprintf("/spec/containers/%d/%s", i, kind), Value: rewritten})
		}
	}
	return ops, served
}

// probePort resolves a probe's port: a number, or a container port's name.
func probePort(v any, ports []ContainerPort) int {
	switch p := v.(type) {
	case float64:
		return int(p)
	case string:
		for _, cp := range ports {
			if cp.Name == p {
				return cp.ContainerPort
			}
		}
		if n, err := strconv.Atoi(p); err == nil {
			return n
		}
	}
	return 0
}

func joinInts(ps []int) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = strconv.Itoa(p)
	}
	return strings.Join(s, ",")
}

// pointerEscape escapes a JSON Pointer token (RFC 6901).
func pointerEscape(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}

type obj = map[string]any

func (in *Injector) tokenVolume() obj {
	return obj{"name": TokenVolume, "projected": obj{"sources": []any{obj{"serviceAccountToken": obj{
		"audience": TokenAudience, "expirationSeconds": int64(in.Config.TokenExpiration.Seconds()), "path": "token",
	}}}}}
}

// initContainer is ursa-init; excluded are the ports whose inbound TCP
// reaches the app directly.
func (in *Injector) initContainer(excluded []int) obj {
	cmd := []string{"ursa-dp", "install-transparent-proxy", "--redirect-all-inbound", "--admin-addr", ":" + strconv.Itoa(AdminPort)}
	if len(excluded) > 0 {
		cmd = append(cmd, "--exclude-inbound-ports", joinInts(excluded))
	}
	cmd = append(cmd, "--exclude-outbound-uids", strconv.Itoa(SidecarUID), "--sidecar-uid", strconv.Itoa(SidecarUID))
	return obj{
		"name": InitName, "image": in.Config.Image, "command": cmd,
		"securityContext": obj{
			"runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": false, "privileged": false,
			"allowPrivilegeEscalation": false,
			"capabilities":             obj{"add": []string{"NET_ADMIN", "NET_RAW"}, "drop": []string{"ALL"}},
		},
		"resources": obj{"requests": obj{"cpu": "10m", "memory": "16Mi"}, "limits": obj{"cpu": "100m", "memory": "64Mi"}},
	}
}

func (in *Injector) sidecar(mesh string, excluded []int, probes []string, drain time.Duration) obj {
	cmd := []string{"ursa-dp", "run",
		"--cp-address", in.CPAddress,
		"--dataplane-name", "$(POD_NAME).$(POD_NAMESPACE)",
		"--mesh", mesh,
		"--token-file", TokenDir + "/token",
		"--transparent-proxy", "--transparent-proxy-installed", "--redirect-all-inbound",
	}
	if len(excluded) > 0 {
		cmd = append(cmd, "--exclude-inbound-ports", joinInts(excluded))
	}
	if len(probes) > 0 {
		cmd = append(cmd, "--app-probes", strings.Join(probes, ","), "--app-probe-host", "$(POD_IP)")
	}
	cmd = append(cmd, "--admin-addr", ":"+strconv.Itoa(AdminPort), "--drain-time", drain.String())
	if !in.NativeSidecar {
		// SIGTERM comes with the application's: the sidecar stays for its
		// whole drain time, serving the application's shutdown calls.
		cmd = append(cmd, "--drain-exit-when-idle=false")
	}
	env := []any{
		obj{"name": "POD_NAME", "valueFrom": obj{"fieldRef": obj{"fieldPath": "metadata.name"}}},
		obj{"name": "POD_NAMESPACE", "valueFrom": obj{"fieldRef": obj{"fieldPath": "metadata.namespace"}}},
		obj{"name": "POD_IP", "valueFrom": obj{"fieldRef": obj{"fieldPath": "status.podIP"}}},
	}
	if len(in.CAPEM) > 0 {
		env = append(env, obj{"name": "URSA_CA_CERT", "value": string(in.CAPEM)})
	}
	probe := func(extra obj) obj {
		p := obj{"httpGet": obj{"path": "/ready", "port": AdminPort}}
		for k, v := range extra {
			p[k] = v
		}
		return p
	}
	res := obj{}
	q := in.Config.Resources
	if r := quantities(q.Requests.CPU, q.Requests.Memory); len(r) > 0 {
		res["requests"] = r
	}
	if l := quantities(q.Limits.CPU, q.Limits.Memory); len(l) > 0 {
		res["limits"] = l
	}
	return obj{
		"name": SidecarName, "image": in.Config.Image, "command": cmd, "env": env,
		"ports":          []any{obj{"name": "ursa-admin", "containerPort": AdminPort, "protocol": "TCP"}},
		"volumeMounts":   []any{obj{"name": TokenVolume, "mountPath": TokenDir, "readOnly": true}},
		"readinessProbe": probe(obj{"periodSeconds": 5, "failureThreshold": 3}),
		"livenessProbe":  probe(obj{"initialDelaySeconds": 60, "periodSeconds": 10, "failureThreshold": 6}),
		"resources":      res,
		"securityContext": obj{
			"runAsUser": SidecarUID, "runAsGroup": SidecarUID, "runAsNonRoot": true,
			"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
			"capabilities": obj{"drop": []string{"ALL"}},
		},
	}
}

func quantities(cpu, memory string) obj {
	o := obj{}
	if cpu != "" {
		o["cpu"] = cpu
	}
	if memory != "" {
		o["memory"] = memory
	}
	return o
}
