// Package kubernetes is the Kubernetes side of a zone: it translates the
// cluster's Pods, Services and Namespaces into Ursa's resources. The
// translation is pure (no API calls, no clock); the controller that watches
// the cluster and writes the results calls it.
//
// The Kubernetes objects are the few fields of core/v1 that the translation
// reads, decoded with encoding/json from the API's JSON, so that the module
// needs no k8s.io dependency.
package kubernetes

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
)

// ObjectMeta is the part of metav1.ObjectMeta the translation reads.
type ObjectMeta struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace,omitempty"`
	// UID tells apart two objects of one name, one after the other.
	UID         string            `json:"uid,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
	// DeletionTimestamp is set once the pod is terminating; its value is
	// not read, only its presence.
	DeletionTimestamp *string          `json:"deletionTimestamp,omitempty"`
	OwnerReferences   []OwnerReference `json:"ownerReferences,omitempty"`
}

// OwnerReference names the object that manages this one (a Pod's ReplicaSet,
// StatefulSet, ...).
type OwnerReference struct {
	Kind       string `json:"kind"`
	Name       string `json:"name"`
	Controller *bool  `json:"controller,omitempty"`
}

// Namespace is a core/v1 Namespace: only its labels and annotations matter.
type Namespace struct {
	Metadata ObjectMeta `json:"metadata"`
}

// Pod is the part of a core/v1 Pod the translation reads.
type Pod struct {
	Metadata ObjectMeta `json:"metadata"`
	Spec     PodSpec    `json:"spec"`
	Status   PodStatus  `json:"status"`
}

// PodSpec holds the pod's containers, for named target ports.
type PodSpec struct {
	Containers []Container `json:"containers"`
}

// Container is one container of a pod.
type Container struct {
	Name  string          `json:"name"`
	Ports []ContainerPort `json:"ports,omitempty"`
}

// ContainerPort is one declared port of a container.
type ContainerPort struct {
	Name          string `json:"name,omitempty"`
	ContainerPort int    `json:"containerPort"`
	// Protocol is TCP when empty.
	Protocol string `json:"protocol,omitempty"`
}

// PodStatus is what the kubelet reports: the pod's IP and conditions.
type PodStatus struct {
	Phase      string         `json:"phase,omitempty"`
	PodIP      string         `json:"podIP,omitempty"`
	Conditions []PodCondition `json:"conditions,omitempty"`
}

// PodCondition is one condition of a pod ("Ready": "True").
type PodCondition struct {
	Type   string `json:"type"`
	Status string `json:"status"`
}

// Service is the part of a core/v1 Service the translation reads.
type Service struct {
	Metadata ObjectMeta    `json:"metadata"`
	Spec     ServiceSpec   `json:"spec"`
	Status   ServiceStatus `json:"status,omitzero"`
}

// ServiceStatus holds a LoadBalancer Service's external addresses.
type ServiceStatus struct {
	LoadBalancer struct {
		Ingress []LoadBalancerIngress `json:"ingress,omitempty"`
	} `json:"loadBalancer,omitzero"`
}

// LoadBalancerIngress is one address a load balancer gave a Service.
type LoadBalancerIngress struct {
	IP       string `json:"ip,omitempty"`
	Hostname string `json:"hostname,omitempty"`
}

// Node is the part of a core/v1 Node a zone ingress's advertised address
// reads: the node's addresses.
type Node struct {
	Metadata ObjectMeta `json:"metadata"`
	Status   struct {
		Addresses []NodeAddress `json:"addresses,omitempty"`
	} `json:"status"`
}

// NodeAddress is one address of a node ("InternalIP", "ExternalIP", ...).
type NodeAddress struct {
	Type    string `json:"type"`
	Address string `json:"address"`
}

// ServiceSpec holds a Service's type, selector and ports.
type ServiceSpec struct {
	// Type is ClusterIP when empty; ExternalName services are skipped.
	Type     string            `json:"type,omitempty"`
	Selector map[string]string `json:"selector,omitempty"`
	// ClusterIP is "None" for a headless Service.
	ClusterIP string        `json:"clusterIP,omitempty"`
	Ports     []ServicePort `json:"ports,omitempty"`
}

// ServicePort is one port of a Service.
type ServicePort struct {
	Name string `json:"name,omitempty"`
	// Protocol is TCP when empty.
	Protocol string `json:"protocol,omitempty"`
	Port     int    `json:"port"`
	// AppProtocol is what the port speaks (Kubernetes' appProtocol): http,
	// http2, kubernetes.io/h2c or grpc make its inbound L7.
	AppProtocol string `json:"appProtocol,omitempty"`
	// TargetPort is the pod's port: a number, or the name of a container
	// port; the Service's Port when absent.
	TargetPort IntOrString `json:"targetPort,omitzero"`
	// NodePort is the port every node forwards to the Service (types
	// NodePort and LoadBalancer).
	NodePort int `json:"nodePort,omitempty"`
}

// IntOrString is Kubernetes' intstr.IntOrString: a JSON number or string.
type IntOrString struct {
	Int int
	// Str is the name, when IsStr.
	Str   string
	IsStr bool
}

// UnmarshalJSON accepts a number or a string; a string of digits is the name
// "8080", not a number, as in Kubernetes. null is absent, as Kubernetes
// reads it.
func (p *IntOrString) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*p = IntOrString{}
		return nil
	}
	if bytes.HasPrefix(b, []byte{'"'}) {
		*p = IntOrString{IsStr: true}
		return json.Unmarshal(b, &p.Str)
	}
	var n json.Number
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("targetPort: want a number or a string, got %.40s", b)
	}
	i, err := strconv.Atoi(n.String())
	if err != nil {
		return fmt.Errorf("targetPort: %s is not an integer", n)
	}
	*p = IntOrString{Int: i}
	return nil
}

// MarshalJSON writes the number or the string.
func (p IntOrString) MarshalJSON() ([]byte, error) {
	if p.IsStr {
		return json.Marshal(p.Str)
	}
	return json.Marshal(p.Int)
}

// IsZero reports an absent target port.
func (p IntOrString) IsZero() bool { return !p.IsStr && p.Int == 0 }

func (p IntOrString) String() string {
	if p.IsStr {
		return strconv.Quote(p.Str)
	}
	return strconv.Itoa(p.Int)
}

// decode unmarshals one object of kind from the API's JSON.
func decode(kind string, data []byte, into any) error {
	if err := json.Unmarshal(data, into); err != nil {
		return fmt.Errorf("decode %s: %w", kind, err)
	}
	return nil
}

// DecodePod decodes a core/v1 Pod from the API's JSON.
func DecodePod(data []byte) (*Pod, error) {
	var p Pod
	if err := decode("pod", data, &p); err != nil {
		return nil, err
	}
	return &p, nil
}

// DecodeService decodes a core/v1 Service from the API's JSON.
func DecodeService(data []byte) (*Service, error) {
	var s Service
	if err := decode("service", data, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// DecodeNamespace decodes a core/v1 Namespace from the API's JSON.
func DecodeNamespace(data []byte) (*Namespace, error) {
	var n Namespace
	if err := decode("namespace", data, &n); err != nil {
		return nil, err
	}
	return &n, nil
}

// ServiceList is a core/v1 ServiceList, what listing Services returns.
type ServiceList struct {
	Items []Service `json:"items"`
}

// DecodeServiceList decodes a core/v1 ServiceList from the API's JSON.
func DecodeServiceList(data []byte) ([]Service, error) {
	var l ServiceList
	if err := decode("service list", data, &l); err != nil {
		return nil, err
	}
	return l.Items, nil
}
