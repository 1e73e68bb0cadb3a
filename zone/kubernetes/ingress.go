package kubernetes

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/ursamesh/ursa/pkg/api"
)

// LabelIngress is "enabled" on the pods of a zone ingress (its Deployment's
// pod template), in the control plane's namespace only.
const LabelIngress = "ursa.io/ingress"

// IngressPortName names the Service port of the ingress when its Service has
// several; with one TCP port, that one.
const IngressPortName = "ingress"

// TranslateIngress returns the ZoneIngress of an ingress pod, named
// <pod>.<namespace>: its address is the pod's IP and the port the ingress
// listens on (the target of the Service's ingress port); it is advertised
// to other zones at the Service's load balancer (its first ingress IP or
// hostname, on the Service's port), else at a node's address (ExternalIP,
// else InternalIP, of the first node by name that has one) on the
// Service's nodePort. A ClusterIP Service advertises nothing: other zones
// then dial the pod's address. The Service is the first by name in the
// pod's namespace that selects the pod. When the pod has no ingress (yet),
// the ZoneIngress is nil and absent says why.
func TranslateIngress(pod *Pod, services []Service, nodes []*Node, zone string) (ing *api.ZoneIngress, absent string, err error) {
	if pod == nil {
		return nil, "", fmt.Errorf("translate ingress: pod is required")
	}
	pm := pod.Metadata
	where := pm.Namespace + "/" + pm.Name
	switch {
	case pm.DeletionTimestamp != nil:
		return nil, "the pod is terminating", nil
	case pod.Status.Phase == "Succeeded" || pod.Status.Phase == "Failed":
		return nil, "the pod has terminated (phase " + pod.Status.Phase + ")", nil
	case pod.Status.PodIP == "":
		return nil, "the pod has no IP yet", nil
	}
	if _, err := netip.ParseAddr(pod.Status.PodIP); err != nil {
		return nil, "", fmt.Errorf("translate ingress %s: status.podIP %q is not an IP address", where, pod.Status.PodIP)
	}
	var skipped []string
	svcs := selecting(pod, services, &skipped)
	if len(svcs) == 0 {
		return nil, "no Service selects the ingress pod", nil
	}
	svc := svcs[0]
	sp, ok := ingressPort(svc)
	if !ok {
		return nil, "", fmt.Errorf("translate ingress %s: service %s has no TCP port named %q, nor only one TCP port", where, svc.Metadata.Name, IngressPortName)
	}
	port, why := targetPort(pod, sp)
	if why != "" {
		return nil, "", fmt.Errorf("translate ingress %s: service %s port %d: %s", where, svc.Metadata.Name, sp.Port, why)
	}
	ing = &api.ZoneIngress{
		Meta:       api.Meta{Type: "ZoneIngress", Name: pm.Name + "." + pm.Namespace},
		Zone:       zone,
		Networking: api.ZoneIngressNetworking{Address: pod.Status.PodIP, Port: port},
	}
	lb := svc.Status.LoadBalancer.Ingress
	switch {
	case svc.Spec.Type == "LoadBalancer" && len(lb) > 0 && (lb[0].IP != "" || lb[0].Hostname != ""):
		ing.Networking.AdvertisedAddress = lb[0].IP
		if ing.Networking.AdvertisedAddress == "" {
			ing.Networking.AdvertisedAddress = lb[0].Hostname
		}
		ing.Networking.AdvertisedPort = sp.Port
	case (svc.Spec.Type == "NodePort" || svc.Spec.Type == "LoadBalancer") && sp.NodePort > 0:
		addr := nodeAddress(nodes)
		if addr == "" {
			return nil, "no node has an address to advertise the NodePort on", nil
		}
		ing.Networking.AdvertisedAddress, ing.Networking.AdvertisedPort = addr, sp.NodePort
	}
	if err := api.Validate(ing); err != nil {
		return nil, "", fmt.Errorf("translate ingress %s: %w", where, err)
	}
	return ing, "", nil
}

// ingressPort is the Service's port named IngressPortName, else its only
// TCP port.
func ingressPort(svc Service) (ServicePort, bool) {
	var tcp []ServicePort
	for _, p := range svc.Spec.Ports {
		if p.Protocol != "" && p.Protocol != "TCP" {
			continue
		}
		if p.Name == IngressPortName {
			return p, true
		}
		tcp = append(tcp, p)
	}
	if len(tcp) == 1 {
		return tcp[0], true
	}
	return ServicePort{}, false
}

// nodeAddress is the ExternalIP of the first node (by name) that has one,
// else the InternalIP of the first that has one.
func nodeAddress(nodes []*Node) string {
	sorted := slices.Clone(nodes)
	slices.SortFunc(sorted, func(a, b *Node) int { return strings.Compare(a.Metadata.Name, b.Metadata.Name) })
	for _, typ := range []string{"ExternalIP", "InternalIP"} {
		for _, n := range sorted {
			for _, a := range n.Status.Addresses {
				if a.Type == typ && a.Address != "" {
					return a.Address
				}
			}
		}
	}
	return ""
}
