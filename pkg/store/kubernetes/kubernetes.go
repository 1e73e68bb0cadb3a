// Package kubernetes is a store.Store kept in a Kubernetes cluster's API:
// every resource is a custom resource of pkg/api/crd (group ursa.io), read
// and written over the API server's REST interface with net/http and
// encoding/json only (no client-go).
//
// # Names and namespaces
//
// Mesh is cluster-scoped. Every other type the store keeps lives in the
// store's namespace (the control plane's, Options.Namespace), but for the
// two below. An object's metadata.name is the resource's name, unchanged,
// and its mesh is the object's top-level mesh field: what a kubectl user
// expects to type (`kubectl get trafficroute r1`), as Kuma names the
// policies users write. Kubernetes names are unique per namespace and kind,
// not per mesh, so two meshes cannot both hold a user's TrafficRoute "r1":
// the second Create gets store.ErrAlreadyExists naming the mesh that holds
// the name. A Get, Update or Delete of a key whose name is held by another
// mesh is ErrNotFound.
//
// What the global sent (label ursa.io/origin=global, api.LabelOrigin) of a
// mesh-scoped type is named "<name>.<hash of the mesh>" (syncedName, as
// Kuma names what it syncs; a hash of both past 253 characters), with the
// real name in the annotation ursa.io/name: two meshes' copies of "r1"
// share the namespace. A resource is looked up under its plain name, then
// under its synced one; it keeps the name it was created under (a label
// changed later does not move it), and a key is held under one of them at
// most (Create refuses the other). Get, List and Watch return real names.
//
// A Dataplane or DataplaneInsight named "<pod>.<namespace>" (the pod
// controller's names; split at the last dot) is object <pod> in namespace
// <namespace> when that namespace exists, next to its pod; every other
// name, and one whose namespace does not exist when it is created, stays
// in the store's namespace under its full name. Lists and watches of these
// two types read every namespace (/apis/ursa.io/v1alpha1/dataplanes): the
// store needs cluster-wide list and watch on them, and in a cluster with
// several control planes each sees the others' workload Dataplanes. The
// pod is not the object's owner (the pod controller deletes what a pod
// leaves). A Dataplane created in the store's namespace before its
// workload namespace existed is still found (the second place looked).
//
// # Private material and leases
//
// Secret, GlobalSecret, MeshCA and ZoneCA (a mesh's secrets, the zone's
// signing keys, the CAs' keys) are core Secrets of the store's namespace,
// of types ursa.io/secret, ursa.io/global-secret, ursa.io/mesh-ca and
// ursa.io/zone-ca (crd.ToSecret: one data key per field, a PEM as is), so
// that the cluster's rules for Secrets apply to them. A namespace holds
// every mesh's and every type's Secrets, so their names are derived
// (crd.SecretName: "mesh-ca.ca.<hash of the mesh>") and the resource's name
// and mesh are the annotations ursa.io/name and ursa.io/mesh: unlike the
// custom resources, two meshes may hold one name. Lists and watches select
// each type with fieldSelector=type=...: the namespace's other Secrets
// (service-account tokens, a user's) are never read. Versions, revisions,
// conditional writes and mesh ownership are those of the custom resources.
//
// Lease is not kept: every method refuses it with an error naming
// leader.KubeLeases, which keeps a control plane's leases as
// coordination.k8s.io Leases (what Kubernetes users and tools know), and
// Watch does not watch it. A zone on Kubernetes elects its leader with
// KubeLeases, never with leader.StoreLeases over this store.
//
// Insights have no status subresource (pkg/api/crd): each write of one is
// one object write and one watch event.
//
// Every mesh-scoped object has its Mesh's object as owner
// (ownerReferences), as in Kuma: Kubernetes' garbage collector deletes it
// when the Mesh goes, whether by `kubectl delete mesh` or after a Create
// that raced the Mesh's Delete (Create checks the mesh, then writes). The
// store's own Delete of a Mesh still deletes the contents itself first, so
// that watchers get each deletion, in order, before the Mesh's.
//
// # Versions and revisions
//
// A resource's Version (1, 2, 3, ...) is the annotation ursa.io/version,
// and its creation and modification times are annotations too (the
// object's creationTimestamp has only second precision). A change made
// around the store (kubectl apply, edit or patch) leaves those as they
// were, but raises the object's metadata.generation: the store writes the
// generation its own write leaves (ursa.io/generation, set right after
// when the API server did otherwise), and reads each generation past it
// as a version more, its modification time the latest of managedFields'.
// An object kubectl created counts its versions by generation. Every conditional
// write carries the resourceVersion read with the version it checked, so
// the API server refuses (409) a write over anything changed since: that is
// the optimistic concurrency, and a 409 is store.ErrConflict.
//
// The store revision is the object's resourceVersion read as an integer.
// resourceVersion is opaque by contract, but in every API server backed by
// etcd it is etcd's revision, one counter for the whole cluster: it orders
// the changes of all 17 kinds and a watch resumes from it. It is NOT
// gapless: every other write in the cluster (leases, events, pods) advances
// it too. store.Store promises "every successful write advances the
// revision by exactly one"; this store promises only that revisions
// strictly increase per object and per kind. The conformance suite's
// checks of exact revision arithmetic are skipped for it by the capability
// storetest.Capabilities.DenseRevisions (false). No caller in this
// repository does arithmetic on revisions; they only resume from them.
//
// # Watch
//
// Watch runs one Kubernetes watch per kind (17) from the given revision and
// merges them. Within a kind events arrive in revision order; across kinds
// they are delivered as they arrive, which is revision order only when the
// streams keep pace (capability OrderedAcrossTypes: false). A watcher that
// resumes from the revision of the last event it handled can therefore
// miss an event of another kind with a smaller revision that had not yet
// arrived; resume from a List's revision instead (store.Mirror and the KDS
// server do). Holding each event until every kind's stream has confirmed
// progress past it (a watch bookmark) would order them, but the API
// server's watch cache sends a watcher a bookmark only on a ~1 s ticker,
// once a minute or 2 s before the watch's timeout, and only when that
// kind's cache has moved past the watcher, which an idle kind's does only
// when etcd reports progress: a hold of one to several seconds per event
// (see test/BENCHMARKS.md), too slow for a zone whose pods' changes must
// reach other zones within a second. 410 Gone
// ("too old resource version") and a revision the cluster has not reached
// are store.ErrCompacted: the caller lists and watches again. The API
// server's watch cache of a kind starts at its first request (or at the API
// server's start) and knows nothing older: a watch from a revision before
// that is 410 too, even when nothing of the kind changed since. Watch from 0
// sends the current objects as creates, in revision order, then their
// changes: the history before them is not kept by Kubernetes. The current
// objects of every kind are one cut: each kind is listed at the first
// list's revision (resourceVersionMatch=Exact), so that every change sent
// after them is newer than all of them.
//
// # Apply
//
// Kubernetes has no transaction over several objects. Apply reads every
// object first (one List of each type with several puts, a GET per key of
// the others; a delete reads its object when its turn comes) and refuses
// the whole batch, writing nothing, when a put's
// version does not match (ErrConflict) or its mesh is neither stored nor in
// the batch (ErrMeshNotFound): every failure the suite provokes is caught
// there. It then writes in order (meshes first, then the puts, then the
// deletes), each write conditional on the resourceVersion it read. A write
// that then fails (a concurrent change: ErrConflict; the API server going
// away) stops the batch and returns a *PartialError saying how many writes
// happened. Callers: KDS sync in a zone (store.Mirror) re-applies the whole
// global state on the next round, so a partial apply heals; `ursactl apply`
// reports the error and can be re-run (its puts are idempotent); GC deletes
// only. None needs cross-object atomicity for correctness, only for
// never showing a half-applied state to watchers, which this store does not
// promise: each change is its own, and never carries store.Event.More, so
// a store.Mirror may publish a View between two writes of one Apply
// (storetest.Capabilities.Transactions, false). The suite's Apply cases
// provoke only failures caught before the first write;
// TestApplyPartialFailure covers a write failing midway.
package kubernetes

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/api/crd"
	"github.com/ursamesh/ursa/pkg/kube"
	"github.com/ursamesh/ursa/pkg/store"
)

// Annotations the store keeps on every object. AnnotationGeneration is
// the object's metadata.generation as the store's own last write left it:
// the API server raises the generation at every change of an object's
// content, kubectl's too, so a generation past it is a change made
// around the store (kubectl apply or edit), each one a version more.
const (
	AnnotationVersion    = "ursa.io/version"
	AnnotationGeneration = "ursa.io/generation"
	AnnotationCreated    = "ursa.io/creation-time"
	AnnotationModified   = "ursa.io/modification-time"
)

// Options configure a Store.
type Options struct {
	// Client talks to the API server (pkg/kube: from a kubeconfig or the
	// pod's service account).
	Client *kube.Client
	// Namespace holds every namespaced resource (the control plane's).
	Namespace string
	Logger    *zap.Logger
}

// Store is a store.Store over the Kubernetes API.
type Store struct {
	client *kube.Client
	ns     string
	log    *zap.Logger
}

var _ store.Store = (*Store)(nil)

// New returns a store over the API opts.Client talks to. The CRDs of
// deploy/crds must be installed; New does not check.
func New(opts Options) (*Store, error) {
	if opts.Client == nil || opts.Namespace == "" {
		return nil, errors.New("kubernetes store: Client and Namespace are required")
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	return &Store{client: opts.Client, ns: opts.Namespace, log: opts.Logger}, nil
}

// kinds are the types this store keeps: those placed as custom resources
// and as core Secrets. Lease is not one of them (see the package doc).
func kinds() []api.Descriptor {
	var out []api.Descriptor
	for _, d := range api.Types() {
		if p, ok := crd.PlacementOf(d.Type); ok && p.Kind != crd.CoordinationLease {
			out = append(out, d)
		}
	}
	return out
}

func descriptor(typ string) (api.Descriptor, error) {
	d, ok := api.Lookup(typ)
	if !ok {
		return d, fmt.Errorf("unknown type %q", typ)
	}
	if p, _ := crd.PlacementOf(typ); p.Kind == crd.CoordinationLease {
		return d, fmt.Errorf("type %s is not kept by the kubernetes store: leader election on Kubernetes uses coordination.k8s.io Leases (leader.KubeLeases)", typ)
	}
	return d, nil
}

// do sends one request (kube.Client.Do) and decodes a 2xx answer into out
// (when not nil). No answer, and 503 or 429, are store.ErrUnavailable; a
// cancelled ctx is ctx.Err().
func (s *Store) do(ctx context.Context, method, path string, body, out any) error {
	return unavailable(ctx, s.client.Do(ctx, method, path, body, out))
}

// unavailable marks the errors of a request the caller may retry later with
// store.ErrUnavailable.
func unavailable(ctx context.Context, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, kube.ErrTransport):
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
	case kube.Code(err) == http.StatusServiceUnavailable || kube.Code(err) == http.StatusTooManyRequests:
		return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
	}
	return err
}

// object is what the store reads of an object besides its body: where it
// is, which resource it holds, and enough to check versions and to write
// conditionally.
type object struct {
	obj     crd.Object
	loc     location
	rv      string
	typ     string // the resource's type, "" when the object holds none
	name    string // the resource's name
	mesh    string
	version int64
	edited  bool // changed around the store since its last write
}

// parse reads an object of the API (a custom resource or a core Secret).
func (s *Store) parse(obj crd.Object) (object, error) {
	md, _ := obj["metadata"].(map[string]any)
	ann, _ := md["annotations"].(map[string]any)
	o := object{obj: obj}
	o.rv, _ = md["resourceVersion"].(string)
	o.loc.ns, _ = md["namespace"].(string)
	o.loc.name, _ = md["name"].(string)
	if k, _ := obj["kind"].(string); k == "Secret" {
		st, _ := obj["type"].(string)
		o.typ, _ = crd.TypeOfSecret(st)
		o.name, _ = ann[crd.AnnotationName].(string)
		o.mesh, _ = ann[crd.AnnotationMesh].(string)
	} else {
		o.typ = k
		o.mesh, _ = obj["mesh"].(string)
		o.name, _ = ann[crd.AnnotationName].(string)
		if d, ok := api.Lookup(k); o.name == "" && ok && inWorkloads(d) && o.loc.ns != "" && o.loc.ns != s.ns {
			o.name = o.loc.name + "." + o.loc.ns
		}
		if o.name == "" {
			o.name = o.loc.name
		}
	}
	gen := generation(md)
	if v, ok := ann[AnnotationVersion].(string); ok {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			return o, fmt.Errorf("annotation %s is %q, not a version", AnnotationVersion, v)
		}
		o.version = n
		if g, err := strconv.ParseInt(fmt.Sprint(ann[AnnotationGeneration]), 10, 64); err == nil && gen > g {
			// Changed around the store since its last write (kubectl),
			// once per generation.
			o.version += gen - g
			o.edited = true
		}
	} else if gen > 0 {
		// Created around the store (kubectl): a version per generation.
		o.version, o.edited = gen, gen > 1
	} else {
		o.version = 1
	}
	return o, nil
}

// generation reads an object's metadata.generation, 0 when it has none
// (a core Secret).
func generation(md map[string]any) int64 {
	switch g := md["generation"].(type) {
	case float64:
		return int64(g)
	case int64:
		return g
	case int:
		return int64(g)
	}
	return 0
}

// lastManaged is the time of an object's latest write by any field
// manager (metadata.managedFields), zero when it says none.
func lastManaged(md map[string]any) time.Time {
	var last time.Time
	entries, _ := md["managedFields"].([]any)
	for _, e := range entries {
		m, _ := e.(map[string]any)
		if t := parseTime(m["time"]); t.After(last) {
			last = t
		}
	}
	return last
}

// holds reports whether o holds the resource of key.
func (o object) holds(key api.Key) bool {
	return o.typ == key.Type && o.name == key.Name && o.mesh == key.Mesh
}

// holder says what holds the object a key's name maps to, for an error.
func (o object) holder() string {
	if o.typ == "" {
		return "an object that is not an Ursa resource"
	}
	if o.mesh == "" {
		return fmt.Sprintf("%s %q", o.typ, o.name)
	}
	return fmt.Sprintf("%s %q of mesh %q", o.typ, o.name, o.mesh)
}

// revision reads a resourceVersion as a store revision.
func revision(rv string) (int64, error) {
	n, err := strconv.ParseInt(rv, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("resourceVersion %q is not an etcd revision", rv)
	}
	return n, nil
}

// decode returns the resource of an object with its name, version and
// times.
func (s *Store) decode(obj crd.Object) (api.Resource, error) {
	o, err := s.parse(obj)
	if err != nil {
		return nil, err
	}
	var r api.Resource
	if k, _ := obj["kind"].(string); k == "Secret" {
		r, err = crd.FromSecret(obj)
	} else {
		r, err = crd.FromObject(obj)
	}
	if err != nil {
		return nil, err
	}
	md, _ := obj["metadata"].(map[string]any)
	ann, _ := md["annotations"].(map[string]any)
	m := r.GetMeta()
	m.Name = o.name
	m.Version = o.version
	m.CreationTime = parseTime(ann[AnnotationCreated], md["creationTimestamp"])
	m.ModificationTime = parseTime(ann[AnnotationModified], md["creationTimestamp"])
	if t := lastManaged(md); o.edited && t.After(m.ModificationTime) {
		m.ModificationTime = t
	}
	return r, nil
}

func parseTime(vals ...any) time.Time {
	for _, v := range vals {
		if s, ok := v.(string); ok {
			if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
				return t.UTC()
			}
		}
	}
	return time.Time{}
}

// encode returns r's object at loc with the store's annotations; rv, when
// not empty, makes a write of it conditional; owners, when not nil, are its
// ownerReferences.
func (s *Store) encode(r api.Resource, loc location, rv string, owners any, gen int64) (crd.Object, error) {
	var (
		obj crd.Object
		err error
	)
	d, _ := api.Lookup(r.GetMeta().Type)
	if isSecret(d) {
		obj, err = crd.ToSecret(r, loc.ns)
	} else {
		obj, err = crd.ToObject(r, loc.ns)
	}
	if errors.Is(err, crd.ErrTooLarge) {
		return nil, fmt.Errorf("%w: %w", store.ErrTooLarge, err)
	}
	if err != nil {
		return nil, err
	}
	m := r.GetMeta()
	md := obj["metadata"].(map[string]any)
	ann, _ := md["annotations"].(map[string]any)
	if ann == nil {
		ann = map[string]any{}
	}
	if !isSecret(d) && loc.name != m.Name {
		md["name"] = loc.name
		ann[crd.AnnotationName] = m.Name
	}
	ann[AnnotationVersion] = strconv.FormatInt(m.Version, 10)
	ann[AnnotationGeneration] = strconv.FormatInt(gen, 10)
	ann[AnnotationCreated] = m.CreationTime.UTC().Format(time.RFC3339Nano)
	ann[AnnotationModified] = m.ModificationTime.UTC().Format(time.RFC3339Nano)
	md["annotations"] = ann
	if rv != "" {
		md["resourceVersion"] = rv
	}
	if owners != nil {
		md["ownerReferences"] = owners
	}
	return obj, nil
}

// read returns the stored object of key, or ok false when there is none;
// when the name key maps to is held by another resource, o is that object
// (o.rv is set).
func (s *Store) read(ctx context.Context, key api.Key) (object, bool, error) {
	d, err := descriptor(key.Type)
	if err != nil {
		return object{}, false, err
	}
	var held object
	for _, loc := range s.candidates(d, key) {
		var obj crd.Object
		if err := s.do(ctx, http.MethodGet, s.path(d, loc), nil, &obj); err != nil {
			if kube.IsNotFound(err) {
				continue
			}
			return object{}, false, err
		}
		o, err := s.parse(obj)
		if err != nil {
			return object{}, false, err
		}
		if o.holds(key) {
			return o, true, nil
		}
		if held.rv == "" {
			held = o
		}
	}
	return held, false, nil
}

// meshUID returns the uid of a Mesh's object, "" when there is none.
func (s *Store) meshUID(ctx context.Context, mesh string) (string, error) {
	o, ok, err := s.read(ctx, api.Key{Type: "Mesh", Name: mesh})
	if err != nil || !ok {
		return "", err
	}
	return uidOf(o.obj), nil
}

func uidOf(obj crd.Object) string {
	md, _ := obj["metadata"].(map[string]any)
	uid, _ := md["uid"].(string)
	return uid
}

// meshOwner is the ownerReferences of an object in the mesh whose object
// has uid: Kubernetes' garbage collector deletes it when the Mesh goes by
// any way (`kubectl delete mesh`, or a Create that raced the Mesh's
// Delete), as Kuma makes a mesh own what is in it.
func meshOwner(mesh, uid string) any {
	return []any{map[string]any{"apiVersion": crd.APIVersion, "kind": "Mesh", "name": mesh, "uid": uid}}
}

// Create implements store.Store.
func (s *Store) Create(ctx context.Context, r api.Resource) (api.Resource, error) {
	r = store.Clone(r)
	key := api.KeyOf(r)
	d, err := descriptor(key.Type)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", key, err)
	}
	var owners any
	if d.Scope == api.ScopeMesh {
		uid, err := s.meshUID(ctx, key.Mesh)
		if err != nil {
			return nil, fmt.Errorf("create %s: %w", key, err)
		}
		if uid == "" {
			return nil, fmt.Errorf("create %s: %w: %q", key, store.ErrMeshNotFound, key.Mesh)
		}
		owners = meshOwner(key.Mesh, uid)
	}
	now := store.Now()
	m := r.GetMeta()
	m.Version, m.CreationTime, m.ModificationTime = 1, now, now
	out, _, err := s.create(ctx, d, r, owners, false)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", key, err)
	}
	return out, nil
}

// create writes r's object where it goes (placements) and returns it and
// its object's uid. A type that may come from the global has its key under
// two names (plain and synced): a key held under either is refused, unless
// checked says the caller just looked. A name taken is ErrAlreadyExists,
// naming what holds it.
func (s *Store) create(ctx context.Context, d api.Descriptor, r api.Resource, owners any, checked bool) (api.Resource, string, error) {
	locs := s.placements(d, r)
	if syncable(d) && !checked {
		if _, ok, err := s.read(ctx, api.KeyOf(r)); err != nil || ok {
			return nil, "", cmp.Or(err, store.ErrAlreadyExists)
		}
	}
	for i, loc := range locs {
		obj, err := s.encode(r, loc, "", owners, 1)
		if err != nil {
			return nil, "", err
		}
		var got crd.Object
		err = s.do(ctx, http.MethodPost, s.collectionIn(d, loc.ns)+"?fieldValidation=Strict", obj, &got)
		switch {
		case kube.IsNotFound(err) && i < len(locs)-1:
			continue // the workload's namespace does not exist
		case kube.IsConflict(err):
			if o, ok, rerr := s.read(ctx, api.KeyOf(r)); rerr == nil && !ok && o.rv != "" {
				return nil, "", fmt.Errorf("%w: the name is held by %s (Kubernetes names are unique per namespace and kind)", store.ErrAlreadyExists, o.holder())
			}
			return nil, "", store.ErrAlreadyExists
		case err != nil:
			return nil, "", err
		}
		got = s.settle(ctx, d, loc, got, 1)
		res, err := s.decode(got)
		return res, uidOf(got), err
	}
	panic("unreachable: placements returns at least one location")
}

// settle makes got, an object the store just wrote expecting its
// generation to be want, say the generation it has (a metadata-only
// write, which leaves the generation as it is), when the API server left
// it lower (a write whose content the server found unchanged: defaults,
// pruning): else a later kubectl change would not count. A generation
// higher than want is left as it reads, a version more, which watchers
// have seen already: putting it right would take the version back.
// Objects without a generation are left alone.
func (s *Store) settle(ctx context.Context, d api.Descriptor, loc location, got crd.Object, want int64) crd.Object {
	md, _ := got["metadata"].(map[string]any)
	gen := generation(md)
	if gen == 0 || gen >= want {
		return got
	}
	ann, _ := md["annotations"].(map[string]any)
	if ann == nil {
		ann = map[string]any{}
	}
	ann[AnnotationGeneration] = strconv.FormatInt(gen, 10)
	md["annotations"] = ann
	var out crd.Object
	if err := s.do(ctx, http.MethodPut, s.path(d, loc)+"?fieldValidation=Strict", got, &out); err != nil {
		// Best effort: the write itself stands. Written meanwhile, the
		// object is another's now; unreachable, its next write settles it.
		return got
	}
	return out
}

// put replaces the object old with r (conditional on old's
// resourceVersion, where old is, keeping its ownerReferences), r's version
// and times already set.
func (s *Store) put(ctx context.Context, d api.Descriptor, r api.Resource, old object) (api.Resource, error) {
	md, _ := old.obj["metadata"].(map[string]any)
	gen := generation(md)
	obj, err := s.encode(r, old.loc, old.rv, md["ownerReferences"], gen)
	if err != nil {
		return nil, err
	}
	if gen > 0 && !sameContent(old.obj, obj) {
		gen++ // the API server raises it for a change outside metadata
		obj["metadata"].(map[string]any)["annotations"].(map[string]any)[AnnotationGeneration] = strconv.FormatInt(gen, 10)
	}
	var got crd.Object
	if err := s.do(ctx, http.MethodPut, s.path(d, old.loc)+"?fieldValidation=Strict", obj, &got); err != nil {
		return nil, conflict(err)
	}
	got = s.settle(ctx, d, old.loc, got, gen)
	return s.decode(got)
}

// sameContent reports whether two objects hold the same content outside
// metadata, which the API server's generation follows (the store's kinds
// have no status subresource: an insight's status is its content).
func sameContent(a, b crd.Object) bool {
	content := func(o crd.Object) string {
		rest := map[string]any{}
		for k, v := range o {
			if k != "metadata" {
				rest[k] = v
			}
		}
		// Through JSON twice: structs become maps, whose keys JSON sorts,
		// and numbers read as the API server's do.
		var norm any
		j, _ := json.Marshal(rest)
		json.Unmarshal(j, &norm)
		j, _ = json.Marshal(norm)
		return string(j)
	}
	return content(a) == content(b)
}

// conflict maps 409 to ErrConflict and 404 (deleted meanwhile) to
// ErrNotFound.
func conflict(err error) error {
	switch kube.Code(err) {
	case http.StatusConflict:
		return fmt.Errorf("%w: %w", store.ErrConflict, err)
	case http.StatusNotFound:
		return fmt.Errorf("%w: %w", store.ErrNotFound, err)
	}
	return err
}

// Update implements store.Store.
func (s *Store) Update(ctx context.Context, r api.Resource) (api.Resource, error) {
	r = store.Clone(r)
	key := api.KeyOf(r)
	d, err := descriptor(key.Type)
	if err != nil {
		return nil, fmt.Errorf("update %s: %w", key, err)
	}
	o, ok, err := s.read(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("update %s: %w", key, err)
	}
	if !ok {
		return nil, fmt.Errorf("update %s: %w", key, store.ErrNotFound)
	}
	m := r.GetMeta()
	if m.Version != o.version {
		return nil, fmt.Errorf("update %s: %w: version %d given, %d stored", key, store.ErrConflict, m.Version, o.version)
	}
	old, err := s.decode(o.obj)
	if err != nil {
		return nil, fmt.Errorf("update %s: %w", key, err)
	}
	m.Version, m.CreationTime, m.ModificationTime = o.version+1, old.GetMeta().CreationTime, store.Now()
	out, err := s.put(ctx, d, r, o)
	if err != nil {
		return nil, fmt.Errorf("update %s: %w", key, err)
	}
	return out, nil
}

// Delete implements store.Store.
func (s *Store) Delete(ctx context.Context, key api.Key, version int64) error {
	o, ok, err := s.read(ctx, key)
	if err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	if !ok {
		return fmt.Errorf("delete %s: %w", key, store.ErrNotFound)
	}
	if version != 0 && version != o.version {
		return fmt.Errorf("delete %s: %w: version %d given, %d stored", key, store.ErrConflict, version, o.version)
	}
	if _, err := s.remove(ctx, o); err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	return nil
}

// remove deletes o if its resourceVersion is still o.rv, after everything
// in it when it is a Mesh (ordered by type and name, as the memory store
// does), and returns how many objects went. The cascade is not atomic: a
// failure leaves the mesh with part of its contents.
func (s *Store) remove(ctx context.Context, o object) (int, error) {
	n := 0
	if o.typ == "Mesh" {
		var inside []object
		for _, d := range kinds() {
			if d.Scope != api.ScopeMesh {
				continue
			}
			objs, _, err := s.listObjects(ctx, d, nil)
			if err != nil {
				return n, err
			}
			for _, in := range objs {
				if in.mesh == o.name {
					inside = append(inside, in)
				}
			}
		}
		slices.SortFunc(inside, func(a, b object) int {
			return cmp.Or(cmp.Compare(a.typ, b.typ), cmp.Compare(a.name, b.name))
		})
		for _, in := range inside {
			d, _ := api.Lookup(in.typ)
			if err := s.deleteObject(ctx, d, in); err != nil && !errors.Is(err, store.ErrNotFound) {
				return n, err
			}
			n++
		}
	}
	d, err := descriptor(o.typ)
	if err != nil {
		return n, err
	}
	if err := s.deleteObject(ctx, d, o); err != nil {
		return n, err
	}
	return n + 1, nil
}

func (s *Store) deleteObject(ctx context.Context, d api.Descriptor, o object) error {
	opts := map[string]any{"kind": "DeleteOptions", "apiVersion": "v1"}
	if o.rv != "" {
		opts["preconditions"] = map[string]any{"resourceVersion": o.rv}
	}
	return conflict(s.do(ctx, http.MethodDelete, s.path(d, o.loc), opts, nil))
}

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, key api.Key) (api.Resource, error) {
	o, ok, err := s.read(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	if !ok {
		return nil, fmt.Errorf("get %s: %w", key, store.ErrNotFound)
	}
	r, err := s.decode(o.obj)
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	return r, nil
}

// listPage is the size of one page of a List.
const listPage = 500

// listObjects returns every object of a type that has all labels, read at
// one revision (the first page's; the rest continue at it), and that
// revision.
func (s *Store) listObjects(ctx context.Context, d api.Descriptor, labels map[string]string) ([]object, int64, error) {
	return s.listObjectsAt(ctx, d, labels, 0)
}

// listObjectsAt is listObjects at revision at (resourceVersionMatch=Exact),
// or at the latest when at is 0.
func (s *Store) listObjectsAt(ctx context.Context, d api.Descriptor, labels map[string]string, at int64) ([]object, int64, error) {
	q := selector(d)
	q.Set("limit", strconv.Itoa(listPage))
	if at > 0 {
		q.Set("resourceVersion", strconv.FormatInt(at, 10))
		q.Set("resourceVersionMatch", "Exact")
	}
	if len(labels) > 0 {
		var sel []string
		for k, v := range labels {
			sel = append(sel, k+"="+v)
		}
		slices.Sort(sel)
		q.Set("labelSelector", strings.Join(sel, ","))
	}
	var (
		out []object
		rev int64
	)
	for {
		var page struct {
			Metadata struct {
				ResourceVersion string `json:"resourceVersion"`
				Continue        string `json:"continue"`
			} `json:"metadata"`
			Items []crd.Object `json:"items"`
		}
		if err := s.do(ctx, http.MethodGet, s.collection(d)+"?"+q.Encode(), nil, &page); err != nil {
			if kube.Code(err) == http.StatusGone && q.Has("continue") {
				// The continue token expired: start again.
				out, rev = nil, 0
				q.Del("continue")
				continue
			}
			return nil, 0, err
		}
		if rev == 0 {
			r, err := revision(page.Metadata.ResourceVersion)
			if err != nil {
				return nil, 0, err
			}
			rev = r
		}
		for _, obj := range page.Items {
			// The items of a list carry no kind; the list's type says it.
			setKind(d, obj)
			o, err := s.parse(obj)
			if err != nil {
				return nil, 0, err
			}
			out = append(out, o)
		}
		if page.Metadata.Continue == "" {
			return out, rev, nil
		}
		q.Set("continue", page.Metadata.Continue)
	}
}

// List implements store.Store.
func (s *Store) List(ctx context.Context, opts store.ListOptions) (store.ListResult, error) {
	d, err := descriptor(opts.Type)
	if err != nil {
		return store.ListResult{}, fmt.Errorf("list %s: %w", opts.Type, err)
	}
	objs, rev, err := s.listObjects(ctx, d, opts.Labels)
	if err != nil {
		return store.ListResult{}, fmt.Errorf("list %s: %w", opts.Type, err)
	}
	res := store.ListResult{Revision: rev}
	for _, o := range objs {
		r, err := s.decode(o.obj)
		if err != nil {
			return store.ListResult{}, fmt.Errorf("list %s: %w", opts.Type, err)
		}
		if opts.Matches(r) {
			res.Items = append(res.Items, r)
		}
	}
	slices.SortFunc(res.Items, func(a, b api.Resource) int {
		am, bm := a.GetMeta(), b.GetMeta()
		return cmp.Or(cmp.Compare(am.Mesh, bm.Mesh), cmp.Compare(am.Name, bm.Name))
	})
	return res, nil
}
