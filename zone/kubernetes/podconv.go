package kubernetes

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/proxy/tproxy"
)

// Labels and annotations the translation reads.
const (
	// LabelSidecarInjection is "enabled" on a Namespace whose pods join the
	// mesh; "disabled" on a pod opts it out, as a label (which the API
	// server reads itself: the injector is not even called, so such pods
	// start while the control plane is down) or as an annotation.
	LabelSidecarInjection = "ursa.io/sidecar-injection"
	// AnnotationMesh on a pod, else on its namespace (annotation or
	// label), names the pod's mesh; "default" without one.
	AnnotationMesh = "ursa.io/mesh"
	// AnnotationService on a Service with exactly one TCP port names the
	// Ursa service of that port instead of <name>_<namespace>_svc_<port>: a
	// hybrid mesh calls it by the name its VMs use ("billing").
	AnnotationService = api.TagService
)

// ServicelessPort is the inbound port of a pod no Service selects, as in
// Kuma: the first port of the dynamic range, which no one binds. The inbound
// gives the pod its identity (its service tag) and is never an endpoint.
const ServicelessPort = 49151

// DefaultMesh is the mesh of a pod whose pod and namespace name none.
const DefaultMesh = "default"

// Result is the translation of one pod.
type Result struct {
	// Dataplane is the pod's Dataplane, valid by api.Validate, or nil when
	// the pod has none (yet): its Dataplane, if any, is to be deleted.
	Dataplane *api.Dataplane
	// Absent says why Dataplane is nil: the namespace is not injected,
	// the pod opted out or terminated, or has no IP yet.
	Absent string
	// Skipped lists what was left out of the Dataplane, each with its
	// reason: Service ports (UDP, unresolvable target ports) and pod labels
	// that are not valid tags.
	Skipped []string
}

// ServiceName is the ursa.io/service of a Service's port when the Service
// does not name it: Kuma's scheme, unique in a cluster.
func ServiceName(service, namespace string, port int) string {
	return fmt.Sprintf("%s_%s_svc_%d", service, namespace, port)
}

// Translate returns the Dataplane of pod, which lives in ns, in zone: one
// inbound per TCP port of each of services that selects it (services of
// other namespaces select nothing), tagged with the pod's labels, the
// port's ursa.io/service and ursa.io/zone. A pod that is not Ready (or is
// terminating) keeps its Dataplane, with inbounds whose health says not
// ready: the catalogue does not make them endpoints. An error names what
// of the objects makes a Dataplane impossible.
func Translate(pod *Pod, ns *Namespace, services []Service, zone string) (Result, error) {
	if pod == nil || ns == nil {
		return Result{}, fmt.Errorf("translate pod: pod and namespace are required")
	}
	pm := pod.Metadata
	if pm.Name == "" || pm.Namespace == "" {
		return Result{}, fmt.Errorf("translate pod: metadata.name and metadata.namespace are required (got %q/%q)", pm.Namespace, pm.Name)
	}
	where := pm.Namespace + "/" + pm.Name
	if ns.Metadata.Name != pm.Namespace {
		return Result{}, fmt.Errorf("translate pod %s: namespace given is %q", where, ns.Metadata.Name)
	}
	if msg := api.CheckTag(api.TagZone, zone); msg != "" {
		return Result{}, fmt.Errorf("translate pod %s: zone: %s", where, msg)
	}
	switch {
	case ns.Metadata.Labels[LabelSidecarInjection] != "enabled":
		return Result{Absent: fmt.Sprintf("namespace %s is not labelled %s=enabled", pm.Namespace, LabelSidecarInjection)}, nil
	case pm.Annotations[LabelSidecarInjection] == "disabled", pm.Labels[LabelSidecarInjection] == "disabled":
		return Result{Absent: fmt.Sprintf("the pod is marked %s=disabled", LabelSidecarInjection)}, nil
	case pm.Annotations[AnnotationInjected] != "true":
		// No sidecar: a pod created before its namespace was labelled, or
		// one on the node's network, which the injector leaves alone. A
		// Dataplane would send meshed callers' mTLS to a plain app.
		return Result{Absent: "the pod has no sidecar (not injected: created before its namespace was labelled, or on the node's network)"}, nil
	case pod.Status.Phase == "Succeeded" || pod.Status.Phase == "Failed":
		return Result{Absent: "the pod has terminated (phase " + pod.Status.Phase + ")"}, nil
	case pod.Status.PodIP == "":
		return Result{Absent: "the pod has no IP yet"}, nil
	}
	if _, err := netip.ParseAddr(pod.Status.PodIP); err != nil {
		return Result{}, fmt.Errorf("translate pod %s: status.podIP %q is not an IP address", where, pod.Status.PodIP)
	}
	mesh := meshOf(pod, ns)
	if msg := api.CheckName(mesh); msg != "" {
		return Result{}, fmt.Errorf("translate pod %s: mesh %q (annotation %s): %s", where, mesh, AnnotationMesh, msg)
	}
	name := pm.Name + "." + pm.Namespace
	if msg := api.CheckName(name); msg != "" {
		return Result{}, fmt.Errorf("translate pod %s: Dataplane name %q: %s", where, name, msg)
	}

	var res Result
	base := labelTags(pm.Labels, &res.Skipped)
	ready := isReady(pod)
	inbound := func(port int, service, protocol string) api.Inbound {
		tags := maps.Clone(base)
		tags[api.TagService] = service
		tags[api.TagZone] = zone
		if protocol != "" {
			tags[api.TagProtocol] = protocol
		}
		return api.Inbound{Port: port, ServicePort: port, Tags: tags, Health: &api.Health{Ready: ready}}
	}
	var inbounds []api.Inbound
	used := map[int]string{} // pod port -> the service it serves
	// The injected rules leave these ports to the app (inject.go): an
	// inbound there would have no sidecar in front of it. A malformed
	// annotation refuses the pod at injection.
	direct, _ := tproxy.ParsePorts(pm.Annotations[AnnotationExcludeInboundPorts])
	direct = append(direct, tproxy.SSHPort)
	for _, svc := range selecting(pod, services, &res.Skipped) {
		named := serviceAnnotation(svc, &res.Skipped)
		for _, sp := range svc.Spec.Ports {
			what := fmt.Sprintf("service %s port %d", svc.Metadata.Name, sp.Port)
			if sp.Protocol != "" && sp.Protocol != "TCP" {
				res.Skipped = append(res.Skipped, what+": protocol "+sp.Protocol+" (only TCP is proxied)")
				continue
			}
			if sp.Port < 1 || sp.Port > 65535 {
				res.Skipped = append(res.Skipped, what+": not a port number")
				continue
			}
			port, why := targetPort(pod, sp)
			if why != "" {
				res.Skipped = append(res.Skipped, what+": "+why)
				continue
			}
			service := named
			if service == "" {
				service = ServiceName(svc.Metadata.Name, pm.Namespace, sp.Port)
				if msg := api.CheckTag(api.TagService, service); msg != "" {
					res.Skipped = append(res.Skipped, fmt.Sprintf("%s: service name %s: %s (name it with the annotation %s)", what, service, msg, AnnotationService))
					continue
				}
			}
			if slices.Contains(direct, port) {
				res.Skipped = append(res.Skipped, fmt.Sprintf("%s: pod port %d is not redirected to the sidecar (SSH's, or the annotation %s): its callers reach the app directly",
					what, port, AnnotationExcludeInboundPorts))
				continue
			}
			if prev, dup := used[port]; dup {
				res.Skipped = append(res.Skipped, fmt.Sprintf("%s: pod port %d already serves %s", what, port, prev))
				continue
			}
			used[port] = service
			inbounds = append(inbounds, inbound(port, service, appProtocol(sp, what, &res.Skipped)))
		}
	}
	if len(inbounds) == 0 {
		in := inbound(ServicelessPort, workload(pod)+"_"+pm.Namespace+"_svc", "")
		in.Health = &api.Health{Ready: false}
		inbounds = append(inbounds, in)
	}
	res.Dataplane = &api.Dataplane{
		Meta:       api.Meta{Type: "Dataplane", Mesh: mesh, Name: name},
		Networking: api.DataplaneNetworking{Address: pod.Status.PodIP, Inbound: inbounds},
	}
	if err := api.Validate(res.Dataplane); err != nil {
		return Result{}, fmt.Errorf("translate pod %s: %w", where, err)
	}
	return res, nil
}

func meshOf(pod *Pod, ns *Namespace) string {
	for _, m := range []map[string]string{pod.Metadata.Annotations, ns.Metadata.Annotations, ns.Metadata.Labels} {
		if v := m[AnnotationMesh]; v != "" {
			return v
		}
	}
	return DefaultMesh
}

// isReady reports the pod's Ready condition; a terminating pod is not ready.
func isReady(pod *Pod) bool {
	if pod.Metadata.DeletionTimestamp != nil {
		return false
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == "Ready" {
			return c.Status == "True"
		}
	}
	return false
}

// reserved reports a label key in Ursa's own domain (ursa.io/..., and
// subdomains): the control plane sets those tags, never a pod's label.
func reserved(key string) bool {
	prefix, _, ok := strings.Cut(key, "/")
	return ok && (prefix == "ursa.io" || strings.HasSuffix(prefix, ".ursa.io"))
}

// appProtocol is the ursa.io/protocol of a Service port, from its
// appProtocol (Kubernetes' field, as Kuma and Istio read it): http, http2
// (or kubernetes.io/h2c) and grpc; "" for TCP. Another value is proxied as
// TCP and listed in skipped.
func appProtocol(sp ServicePort, what string, skipped *[]string) string {
	switch p := strings.ToLower(sp.AppProtocol); p {
	case "", "tcp":
		return ""
	case api.ProtocolHTTP, api.ProtocolHTTP2, api.ProtocolGRPC:
		return p
	case "kubernetes.io/h2c":
		return api.ProtocolHTTP2
	default:
		*skipped = append(*skipped, fmt.Sprintf("%s: appProtocol %q is not one Ursa proxies at L7 (http, http2, kubernetes.io/h2c, grpc): proxied as TCP", what, sp.AppProtocol))
		return ""
	}
}

// labelTags turns the pod's labels into tags, dropping (and listing in
// skipped) those in Ursa's domain and those that are not valid tags (an
// empty value).
func labelTags(labels map[string]string, skipped *[]string) map[string]string {
	tags := make(map[string]string, len(labels)+2)
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		v := labels[k]
		switch msg := api.CheckTag(k, v); {
		case reserved(k):
			*skipped = append(*skipped, fmt.Sprintf("label %s: reserved for Ursa", k))
		case msg != "":
			*skipped = append(*skipped, fmt.Sprintf("label %s: not a valid tag: %s", k, msg))
		default:
			tags[k] = v
		}
	}
	return tags
}

// selecting returns the services that select pod, by name: same namespace,
// a non-empty selector the pod's labels match, not ExternalName (which names
// a host outside the cluster; Kubernetes accepts a selector on it anyway).
// Headless services select as any other: their clients dial the pods.
func selecting(pod *Pod, services []Service, skipped *[]string) []Service {
	var out []Service
	for _, s := range services {
		if s.Metadata.Namespace != pod.Metadata.Namespace || len(s.Spec.Selector) == 0 {
			continue
		}
		match := true
		for k, v := range s.Spec.Selector {
			if lv, ok := pod.Metadata.Labels[k]; !ok || lv != v {
				match = false
				break
			}
		}
		if !match {
			continue
		}
		if s.Spec.Type == "ExternalName" {
			*skipped = append(*skipped, "service "+s.Metadata.Name+": ExternalName")
			continue
		}
		out = append(out, s)
	}
	slices.SortStableFunc(out, func(a, b Service) int { return strings.Compare(a.Metadata.Name, b.Metadata.Name) })
	return out
}

// serviceAnnotation returns the service name the Service's annotation gives
// its single TCP port, or "".
func serviceAnnotation(svc Service, skipped *[]string) string {
	v, ok := svc.Metadata.Annotations[AnnotationService]
	if !ok {
		return ""
	}
	tcp := 0
	for _, p := range svc.Spec.Ports {
		if p.Protocol == "" || p.Protocol == "TCP" {
			tcp++
		}
	}
	what := "service " + svc.Metadata.Name + ": annotation " + AnnotationService
	if tcp != 1 {
		*skipped = append(*skipped, fmt.Sprintf("%s ignored: it names a Service of one TCP port, this one has %d", what, tcp))
		return ""
	}
	if msg := api.CheckTag(api.TagService, v); msg != "" {
		*skipped = append(*skipped, fmt.Sprintf("%s ignored: %s", what, msg))
		return ""
	}
	return v
}

// targetPort resolves a Service port to the pod's port: the number, the
// Service's port when absent, or the TCP container port of that name; why
// says what failed.
func targetPort(pod *Pod, sp ServicePort) (port int, why string) {
	tp := sp.TargetPort
	if !tp.IsStr {
		port = tp.Int
		if tp.IsZero() {
			port = sp.Port
		}
		if port < 1 || port > 65535 {
			return 0, fmt.Sprintf("targetPort %d is not a port number", port)
		}
		return port, ""
	}
	for _, c := range pod.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name == tp.Str && (cp.Protocol == "" || cp.Protocol == "TCP") {
				if cp.ContainerPort < 1 || cp.ContainerPort > 65535 {
					return 0, fmt.Sprintf("targetPort %q: container %s's port %d is not a port number", tp.Str, c.Name, cp.ContainerPort)
				}
				return cp.ContainerPort, ""
			}
		}
	}
	return 0, fmt.Sprintf("targetPort %q names no TCP port of the pod's containers", tp.Str)
}

// workload names what runs the pod: its controller (a Deployment rather
// than the ReplicaSet between them), else the pod itself.
func workload(pod *Pod) string {
	for _, o := range pod.Metadata.OwnerReferences {
		if o.Controller == nil || !*o.Controller || o.Name == "" {
			continue
		}
		if h := pod.Metadata.Labels["pod-template-hash"]; o.Kind == "ReplicaSet" && h != "" {
			if d, ok := strings.CutSuffix(o.Name, "-"+h); ok && d != "" {
				return d
			}
		}
		return o.Name
	}
	return pod.Metadata.Name
}
