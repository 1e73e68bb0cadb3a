package leader

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/ursamesh/ursa/pkg/kube"
)

// KubeLeases keeps leases as coordination.k8s.io/v1 Leases in one
// namespace of a Kubernetes cluster, with optimistic concurrency by
// resourceVersion (a stale one is a 409, ErrConflict). Record.Version is
// the resourceVersion. A released lease keeps its object, with no holder,
// as client-go's leaderelection leaves it.
//
// The replica's service account needs get, create and update on leases in
// Namespace.
type KubeLeases struct {
	Client    *kube.Client
	Namespace string
}

var _ Leases = KubeLeases{}

// kubeLease is the part of a coordination.k8s.io/v1 Lease the elector
// reads and writes. An update sends only these fields: labels or
// annotations someone put on the object are dropped.
type kubeLease struct {
	APIVersion string         `json:"apiVersion"`
	Kind       string         `json:"kind"`
	Metadata   kubeObjectMeta `json:"metadata"`
	Spec       kubeLeaseSpec  `json:"spec"`
}

type kubeObjectMeta struct {
	Name            string `json:"name"`
	Namespace       string `json:"namespace,omitempty"`
	ResourceVersion string `json:"resourceVersion,omitempty"`
}

type kubeLeaseSpec struct {
	HolderIdentity       *string    `json:"holderIdentity,omitempty"`
	LeaseDurationSeconds *int32     `json:"leaseDurationSeconds,omitempty"`
	AcquireTime          *microTime `json:"acquireTime,omitempty"`
	RenewTime            *microTime `json:"renewTime,omitempty"`
	LeaseTransitions     *int32     `json:"leaseTransitions,omitempty"`
}

// microTime is metav1.MicroTime: RFC 3339 with microseconds.
type microTime struct{ time.Time }

const microLayout = "2006-01-02T15:04:05.000000Z07:00"

func (t microTime) MarshalJSON() ([]byte, error) {
	return []byte(`"` + t.UTC().Format(microLayout) + `"`), nil
}

func (t *microTime) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	if len(b) < 2 || b[0] != '"' || b[len(b)-1] != '"' {
		return fmt.Errorf("time %s is not a string", truncate(b))
	}
	v, err := time.Parse(time.RFC3339Nano, string(b[1:len(b)-1]))
	if err != nil {
		return fmt.Errorf("time %s: %w", truncate(b), err)
	}
	t.Time = v
	return nil
}

func truncate(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + "..."
	}
	return string(b)
}

func (k KubeLeases) path(name string) string {
	p := "/apis/coordination.k8s.io/v1/namespaces/" + url.PathEscape(k.Namespace) + "/leases"
	if name != "" {
		p += "/" + url.PathEscape(name)
	}
	return p
}

// Get implements Leases.
func (k KubeLeases) Get(ctx context.Context, name string) (Record, error) {
	var raw json.RawMessage
	err := k.Client.Do(ctx, "GET", k.path(name), nil, &raw)
	if kube.IsNotFound(err) {
		return Record{}, fmt.Errorf("lease %s/%s: %w", k.Namespace, name, ErrNotFound)
	}
	if err != nil {
		return Record{}, fmt.Errorf("get lease %s/%s: %w", k.Namespace, name, err)
	}
	r, err := decodeLease(raw)
	if err != nil {
		return Record{}, fmt.Errorf("lease %s/%s: %w", k.Namespace, name, err)
	}
	return r, nil
}

// Create implements Leases.
func (k KubeLeases) Create(ctx context.Context, name string, r Record) error {
	err := k.Client.Do(ctx, "POST", k.path(""), k.object(name, r), nil)
	if kube.IsConflict(err) {
		return fmt.Errorf("create lease %s/%s: %w: %w", k.Namespace, name, ErrConflict, err)
	}
	if err != nil {
		return fmt.Errorf("create lease %s/%s: %w", k.Namespace, name, err)
	}
	return nil
}

// Update implements Leases.
func (k KubeLeases) Update(ctx context.Context, name string, r Record) error {
	if r.Version == "" {
		return fmt.Errorf("update lease %s/%s: no resourceVersion", k.Namespace, name)
	}
	err := k.Client.Do(ctx, "PUT", k.path(name), k.object(name, r), nil)
	if kube.IsConflict(err) || kube.IsNotFound(err) {
		return fmt.Errorf("update lease %s/%s: %w: %w", k.Namespace, name, ErrConflict, err)
	}
	if err != nil {
		return fmt.Errorf("update lease %s/%s: %w", k.Namespace, name, err)
	}
	return nil
}

// Release implements Leases: it clears the holder, if the lease is
// unchanged since r was read.
func (k KubeLeases) Release(ctx context.Context, name string, r Record) error {
	r.Holder = ""
	r.RenewTime = time.Now()
	return k.Update(ctx, name, r)
}

func (k KubeLeases) object(name string, r Record) *kubeLease {
	l := &kubeLease{APIVersion: "coordination.k8s.io/v1", Kind: "Lease",
		Metadata: kubeObjectMeta{Name: name, Namespace: k.Namespace, ResourceVersion: r.Version}}
	if r.Holder != "" {
		l.Spec.HolderIdentity = &r.Holder
	}
	d := int32(max(1, int(r.Duration.Seconds())))
	tr := int32(r.Transitions)
	l.Spec.LeaseDurationSeconds, l.Spec.LeaseTransitions = &d, &tr
	if !r.AcquireTime.IsZero() {
		l.Spec.AcquireTime = &microTime{r.AcquireTime}
	}
	if !r.RenewTime.IsZero() {
		l.Spec.RenewTime = &microTime{r.RenewTime}
	}
	return l
}

// record checks what the apiserver (or whoever wrote the object) gave.
func (l *kubeLease) record() (Record, error) {
	if l.Kind != "" && l.Kind != "Lease" {
		return Record{}, fmt.Errorf("the object is a %q, not a Lease", l.Kind)
	}
	if l.Metadata.ResourceVersion == "" {
		return Record{}, errors.New("the object has no resourceVersion")
	}
	r := Record{Version: l.Metadata.ResourceVersion}
	s := l.Spec
	if s.HolderIdentity != nil {
		r.Holder = *s.HolderIdentity
	}
	if s.LeaseDurationSeconds != nil {
		if *s.LeaseDurationSeconds <= 0 && r.Holder != "" {
			return Record{}, fmt.Errorf("leaseDurationSeconds %d is not positive", *s.LeaseDurationSeconds)
		}
		r.Duration = secs(int(*s.LeaseDurationSeconds))
	} else if r.Holder != "" {
		return Record{}, errors.New("a holder but no leaseDurationSeconds")
	}
	if s.AcquireTime != nil {
		r.AcquireTime = s.AcquireTime.Time
	}
	if s.RenewTime != nil {
		r.RenewTime = s.RenewTime.Time
	}
	if s.LeaseTransitions != nil {
		r.Transitions = int(*s.LeaseTransitions)
	}
	return r, nil
}

// decodeLease decodes and checks a Lease as the apiserver sends it.
func decodeLease(b []byte) (Record, error) {
	var l kubeLease
	if err := json.Unmarshal(b, &l); err != nil {
		return Record{}, fmt.Errorf("decode lease: %w", err)
	}
	return l.record()
}
