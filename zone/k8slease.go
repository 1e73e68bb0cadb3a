package zone

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/kube"
	"github.com/ursamesh/ursa/pkg/store"
)

// labelStoreLease marks the coordination Leases that hold the store's
// api.Lease resources (the replicas' heartbeats), apart from the leader
// elections' Leases of the same namespace.
const labelStoreLease = "ursa.io/store-lease"

// withLeases is the store of a zone on Kubernetes: pkg/store/kubernetes,
// which does not keep api.Lease (leases are coordination.k8s.io Leases
// there), plus api.Lease kept here as coordination Leases in the system
// namespace, labelled labelStoreLease. The zone's replicas write their
// heartbeats as api.Lease and read each other's through the mirror.
//
// A Lease's Version is its resourceVersion (it increases with every write,
// not by one). An Apply that mixes Leases with other resources writes the
// Leases first and is not atomic across the two; the zone only ever applies
// a heartbeat alone.
type withLeases struct {
	store.Store
	client *kube.Client
	ns     string
}

type coordLease struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name            string            `json:"name"`
		Namespace       string            `json:"namespace,omitempty"`
		ResourceVersion string            `json:"resourceVersion,omitempty"`
		Labels          map[string]string `json:"labels,omitempty"`
		CreationTime    time.Time         `json:"creationTimestamp,omitzero"`
	} `json:"metadata"`
	Spec struct {
		HolderIdentity       string `json:"holderIdentity,omitempty"`
		LeaseDurationSeconds int    `json:"leaseDurationSeconds,omitempty"`
		RenewTime            string `json:"renewTime,omitempty"`
	} `json:"spec"`
}

const microTime = "2006-01-02T15:04:05.000000Z07:00"

func (s withLeases) path(name string) string {
	p := "/apis/coordination.k8s.io/v1/namespaces/" + url.PathEscape(s.ns) + "/leases"
	if name != "" {
		p += "/" + url.PathEscape(name)
	}
	return p
}

func (s withLeases) toObject(l *api.Lease, rv string) *coordLease {
	o := &coordLease{APIVersion: "coordination.k8s.io/v1", Kind: "Lease"}
	o.Metadata.Name, o.Metadata.Namespace, o.Metadata.ResourceVersion = l.Name, s.ns, rv
	o.Metadata.Labels = map[string]string{labelStoreLease: "true"}
	for k, v := range l.Labels {
		o.Metadata.Labels[k] = v
	}
	o.Spec.HolderIdentity, o.Spec.LeaseDurationSeconds = l.Holder, l.Duration
	if !l.RenewTime.IsZero() {
		o.Spec.RenewTime = l.RenewTime.UTC().Format(microTime)
	}
	return o
}

func fromObject(o *coordLease) (*api.Lease, error) {
	rv, err := strconv.ParseInt(o.Metadata.ResourceVersion, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("lease %s: resourceVersion %q is not a revision", o.Metadata.Name, o.Metadata.ResourceVersion)
	}
	l := &api.Lease{Meta: api.Meta{Type: "Lease", Name: o.Metadata.Name, Version: rv, CreationTime: o.Metadata.CreationTime},
		Holder: o.Spec.HolderIdentity, Duration: o.Spec.LeaseDurationSeconds}
	for k, v := range o.Metadata.Labels {
		if k != labelStoreLease {
			if l.Labels == nil {
				l.Labels = map[string]string{}
			}
			l.Labels[k] = v
		}
	}
	if o.Spec.RenewTime != "" {
		if l.RenewTime, err = time.Parse(time.RFC3339Nano, o.Spec.RenewTime); err != nil {
			return nil, fmt.Errorf("lease %s: renewTime: %w", o.Metadata.Name, err)
		}
	}
	l.ModificationTime = l.RenewTime
	return l, nil
}

// leaseErr maps the API server's answers onto the store's errors.
func leaseErr(ctx context.Context, op, name string, err error) error {
	switch {
	case err == nil:
		return nil
	case kube.IsNotFound(err):
		return fmt.Errorf("%s lease %s: %w", op, name, store.ErrNotFound)
	case kube.IsConflict(err) && op == "create":
		return fmt.Errorf("%s lease %s: %w", op, name, store.ErrAlreadyExists)
	case kube.IsConflict(err):
		return fmt.Errorf("%s lease %s: %w", op, name, store.ErrConflict)
	case errors.Is(err, kube.ErrTransport) && ctx.Err() == nil, kube.Code(err) == http.StatusServiceUnavailable, kube.Code(err) == http.StatusTooManyRequests:
		return fmt.Errorf("%s lease %s: %w: %w", op, name, store.ErrUnavailable, err)
	}
	return fmt.Errorf("%s lease %s: %w", op, name, err)
}

func isLease(typ string) bool { return typ == "Lease" }

func (s withLeases) Get(ctx context.Context, key api.Key) (api.Resource, error) {
	if !isLease(key.Type) {
		return s.Store.Get(ctx, key)
	}
	var o coordLease
	if err := s.client.Do(ctx, http.MethodGet, s.path(key.Name), nil, &o); err != nil {
		return nil, leaseErr(ctx, "get", key.Name, err)
	}
	if o.Metadata.Labels[labelStoreLease] != "true" {
		return nil, fmt.Errorf("get lease %s: a leader election's: %w", key.Name, store.ErrNotFound)
	}
	return fromObject(&o)
}

func (s withLeases) write(ctx context.Context, l *api.Lease, rv string) (api.Resource, error) {
	if err := api.Validate(l); err != nil {
		return nil, err
	}
	var o coordLease
	var err error
	if rv == "" {
		err = leaseErr(ctx, "create", l.Name, s.client.Do(ctx, http.MethodPost, s.path(""), s.toObject(l, ""), &o))
	} else {
		err = leaseErr(ctx, "update", l.Name, s.client.Do(ctx, http.MethodPut, s.path(l.Name), s.toObject(l, rv), &o))
	}
	if err != nil {
		return nil, err
	}
	return fromObject(&o)
}

func (s withLeases) Create(ctx context.Context, r api.Resource) (api.Resource, error) {
	l, ok := r.(*api.Lease)
	if !ok {
		return s.Store.Create(ctx, r)
	}
	return s.write(ctx, l, "")
}

func (s withLeases) Update(ctx context.Context, r api.Resource) (api.Resource, error) {
	l, ok := r.(*api.Lease)
	if !ok {
		return s.Store.Update(ctx, r)
	}
	cur, err := s.Get(ctx, api.KeyOf(l))
	if err != nil {
		return nil, err
	}
	if cur.GetMeta().Version != l.Version {
		return nil, fmt.Errorf("update lease %s: %w", l.Name, store.ErrConflict)
	}
	return s.write(ctx, l, strconv.FormatInt(l.Version, 10))
}

func (s withLeases) Delete(ctx context.Context, key api.Key, version int64) error {
	if !isLease(key.Type) {
		return s.Store.Delete(ctx, key, version)
	}
	var body any
	if version != 0 {
		body = map[string]any{"kind": "DeleteOptions", "apiVersion": "v1",
			"preconditions": map[string]any{"resourceVersion": strconv.FormatInt(version, 10)}}
	} else if _, err := s.Get(ctx, key); err != nil {
		return err // not one of the store's
	}
	return leaseErr(ctx, "delete", key.Name, s.client.Do(ctx, http.MethodDelete, s.path(key.Name), body, nil))
}

func (s withLeases) List(ctx context.Context, opts store.ListOptions) (store.ListResult, error) {
	if !isLease(opts.Type) {
		return s.Store.List(ctx, opts)
	}
	var list struct {
		Metadata struct {
			ResourceVersion string `json:"resourceVersion"`
		} `json:"metadata"`
		Items []coordLease `json:"items"`
	}
	q := url.Values{"labelSelector": {labelStoreLease + "=true"}}
	if err := s.client.Do(ctx, http.MethodGet, s.path("")+"?"+q.Encode(), nil, &list); err != nil {
		return store.ListResult{}, leaseErr(ctx, "list", "", err)
	}
	rev, err := strconv.ParseInt(list.Metadata.ResourceVersion, 10, 64)
	if err != nil {
		return store.ListResult{}, fmt.Errorf("list leases: resourceVersion %q is not a revision", list.Metadata.ResourceVersion)
	}
	res := store.ListResult{Revision: rev}
	for i := range list.Items {
		l, err := fromObject(&list.Items[i])
		if err != nil {
			return store.ListResult{}, err
		}
		if opts.Matches(l) {
			res.Items = append(res.Items, l)
		}
	}
	return res, nil
}

// Apply writes the Leases among puts and deletes here, then the rest to the
// cluster's store.
func (s withLeases) Apply(ctx context.Context, puts []api.Resource, deletes []api.Key) (int, error) {
	var rest []api.Resource
	var restDel []api.Key
	n := 0
	for _, r := range puts {
		l, ok := r.(*api.Lease)
		if !ok {
			rest = append(rest, r)
			continue
		}
		cur, err := s.Get(ctx, api.KeyOf(l))
		switch {
		case errors.Is(err, store.ErrNotFound):
			if l.Version != 0 {
				return n, fmt.Errorf("apply lease %s: %w", l.Name, store.ErrConflict)
			}
			_, err = s.write(ctx, l, "")
		case err != nil:
			return n, err
		case l.Version != 0 && l.Version != cur.GetMeta().Version:
			return n, fmt.Errorf("apply lease %s: %w", l.Name, store.ErrConflict)
		default:
			_, err = s.write(ctx, l, strconv.FormatInt(cur.GetMeta().Version, 10))
		}
		if err != nil {
			return n, err
		}
		n++
	}
	for _, k := range deletes {
		if !isLease(k.Type) {
			restDel = append(restDel, k)
			continue
		}
		if err := s.Delete(ctx, k, 0); err != nil && !errors.Is(err, store.ErrNotFound) {
			return n, err
		} else if err == nil {
			n++
		}
	}
	if len(rest) == 0 && len(restDel) == 0 {
		return n, nil
	}
	m, err := s.Store.Apply(ctx, rest, restDel)
	return n + m, err
}

// Watch merges the cluster store's changes with the Leases'. As in the
// cluster's store, changes of different kinds arrive in the order the
// streams deliver them.
func (s withLeases) Watch(ctx context.Context, since int64, fn func(store.Event) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var mu sync.Mutex
	serial := func(e store.Event) error {
		mu.Lock()
		defer mu.Unlock()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fn(e)
	}
	errs := make(chan error, 2)
	go func() { errs <- s.Store.Watch(ctx, since, serial) }()
	go func() { errs <- s.watchLeases(ctx, since, serial) }()
	err := <-errs
	cancel()
	<-errs
	return err
}

func (s withLeases) watchLeases(ctx context.Context, since int64, fn func(store.Event) error) error {
	rv := strconv.FormatInt(since, 10)
	delay := 100 * time.Millisecond
	for {
		q := url.Values{"watch": {"1"}, "resourceVersion": {rv}, "allowWatchBookmarks": {"true"},
			"labelSelector": {labelStoreLease + "=true"}, "timeoutSeconds": {"300"}}
		body, err := s.client.Stream(ctx, s.path("")+"?"+q.Encode())
		if kube.Code(err) == http.StatusGone {
			return fmt.Errorf("watch leases from %s: %w", rv, store.ErrCompacted)
		}
		if err == nil {
			var next string
			next, err = s.readLeaseEvents(ctx, body, fn)
			body.Close()
			if next != "" {
				rv, delay = next, 100*time.Millisecond
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil && !errors.Is(err, kube.ErrTransport) && !errors.Is(err, errStreamBroken) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

var errStreamBroken = errors.New("watch stream broke")

// readLeaseEvents hands fn the changes of one watch stream and returns the
// last resourceVersion it carried.
func (s withLeases) readLeaseEvents(ctx context.Context, body io.Reader, fn func(store.Event) error) (string, error) {
	dec := json.NewDecoder(body)
	last := ""
	for {
		var ev struct {
			Type   string          `json:"type"`
			Object json.RawMessage `json:"object"`
		}
		if err := dec.Decode(&ev); err != nil {
			if errors.Is(err, io.EOF) || ctx.Err() != nil {
				return last, nil
			}
			return last, fmt.Errorf("%w: %w", errStreamBroken, err)
		}
		var o coordLease
		if err := json.Unmarshal(ev.Object, &o); err != nil {
			return last, fmt.Errorf("watch leases: %w", err)
		}
		switch ev.Type {
		case "ERROR":
			var st struct {
				Code int `json:"code"`
			}
			json.Unmarshal(ev.Object, &st)
			if st.Code == http.StatusGone {
				return last, fmt.Errorf("watch leases: %w", store.ErrCompacted)
			}
			return last, fmt.Errorf("%w: error event %s", errStreamBroken, ev.Object)
		case "BOOKMARK":
			last = o.Metadata.ResourceVersion
			continue
		}
		l, err := fromObject(&o)
		if err != nil {
			return last, err
		}
		op := store.OpUpdate
		switch ev.Type {
		case "ADDED":
			op = store.OpCreate
		case "DELETED":
			op = store.OpDelete
		}
		if err := fn(store.Event{Revision: l.Version, Op: op, Resource: l}); err != nil {
			return last, err
		}
		last = o.Metadata.ResourceVersion
	}
}
