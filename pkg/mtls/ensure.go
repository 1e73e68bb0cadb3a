package mtls

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// Source gives the current view of a store.
type Source interface {
	Current() (*store.View, <-chan struct{})
}

// Zones returns the zones that are to have an intermediate CA in every mTLS
// mesh, as of view: at the global, the enabled Zones; in a standalone zone,
// itself.
type Zones func(view *store.View) (map[string]bool, error)

// EnabledZones is Zones at the global: every Zone that is enabled. The
// view must follow Zone.
func EnabledZones(view *store.View) (map[string]bool, error) {
	zones, err := store.All[*api.Zone](view)
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, z := range zones {
		if z.IsEnabled() {
			out[z.Name] = true
		}
	}
	return out, nil
}

// OnlyZone is Zones in a standalone zone: the zone itself.
func OnlyZone(zone string) Zones {
	return func(*store.View) (map[string]bool, error) { return map[string]bool{zone: true}, nil }
}

// Authority keeps every mTLS mesh's certificate authorities as they should
// be, where the roots' keys are (the global, or a standalone zone): a root
// per mesh, made once, and replaced step by step once a rotation asked
// for a next one (RotateRoot); an intermediate (ZoneCA) per mesh and zone
// of Zones, replaced before it expires; the intermediate of a zone no
// longer among them revoked and deleted; the roots' revocation lists kept
// signed and fresh. Every write is one transaction conditional on the MeshCA it was
// decided from, so replicas racing each other are harmless: the loser
// decides again from what the winner wrote.
type Authority struct {
	Store  store.Store
	Source Source // follows Mesh, MeshCA, ZoneCA and what Zones reads
	Zones  Zones
	Log    *zap.Logger
	// Every is how often the authority looks again without a change, for
	// what time alone makes due (renewals, the revocation list, the steps
	// of a root's rotation); a quarter of Timing's Published when zero, so
	// that a step is taken at most a quarter of that late.
	Every time.Duration
	// Timing is how long what is new is published before it is relied on.
	Timing Timing
	// UpToDate, when set, reports the zones known to hold what they were
	// last sent (ZonesUpToDate, at the global). While a root is being
	// replaced, no zone moves to the next root's intermediates, and the
	// old root does not retire, unless every enabled zone is among them: a
	// zone away then would refuse its peers' new certificates until it is
	// back. Nil takes every zone for up to date (a standalone zone, its
	// own only zone).
	UpToDate func(context.Context) (map[string]bool, error)
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Start reconciles on every change of the view until ctx ends.
func (a *Authority) Start(ctx context.Context) error {
	every := a.Every
	if every <= 0 {
		every = max(a.Timing.published()/4, 10*time.Millisecond)
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		view, changed := a.Source.Current()
		if err := a.Reconcile(ctx, view); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-tick.C:
		}
	}
}

// Reconcile makes one pass over view. It returns an error only when view
// cannot be read; a write that fails is logged and tried again on the next
// change or tick.
func (a *Authority) Reconcile(ctx context.Context, view *store.View) error {
	now := store.Now()
	if a.Now != nil {
		now = a.Now().UTC()
	}
	meshes, err := store.All[*api.Mesh](view)
	if err != nil {
		return fmt.Errorf("mesh CAs: %w", err)
	}
	zones, err := a.Zones(view)
	if err != nil {
		return fmt.Errorf("mesh CAs: %w", err)
	}
	zcas, err := store.All[*api.ZoneCA](view)
	if err != nil {
		return fmt.Errorf("mesh CAs: %w", err)
	}
	away, err := a.away(ctx, view, zones, now)
	if err != nil {
		return fmt.Errorf("mesh CAs: %w", err)
	}
	for _, m := range meshes {
		if !m.MTLSEnabled() {
			continue
		}
		log := a.Log.With(zap.String("mesh", m.Name))
		root, ok, err := store.Get[*api.MeshCA](view, m.Name, CAName)
		if err != nil {
			return fmt.Errorf("mesh CAs: %w", err)
		}
		if !ok {
			a.createRoot(ctx, m.Name, now, log)
			continue // its intermediates follow once the root is in the view
		}
		if root.KeyPEM == "" {
			log.Error("the mesh's root CA has no key in this store: cannot sign zone CAs")
			continue
		}
		mine := map[string]*api.ZoneCA{}
		for _, z := range zcas {
			if z.Mesh == m.Name {
				mine[z.Name] = z
			}
		}
		if root.Rotating() && len(away) > 0 {
			log.Info("the root's rotation waits for zones that may not hold its latest certificates and lists (disable a zone that is gone for good)",
				zap.Strings("zones", slices.Sorted(maps.Keys(away))))
		}
		puts, deletes, what, err := a.Timing.plan(root, mine, zones, away, now)
		if err != nil {
			log.Error("cannot bring the mesh's zone CAs up to date", zap.Error(err))
			continue
		}
		if len(puts) == 0 && len(deletes) == 0 {
			continue
		}
		if _, err := a.Store.Apply(ctx, puts, deletes); err != nil {
			switch {
			case ctx.Err() != nil:
			case errors.Is(err, store.ErrConflict):
				// Decided from a view older than a write (another
				// replica's, or this one's not yet mirrored): the view
				// that shows it decides again.
				log.Debug("the mesh's CAs changed since this view; deciding again on the next", zap.Error(err))
			default:
				log.Warn("cannot store the mesh's CAs; will decide again on the next change", zap.Error(err))
			}
			continue
		}
		for _, w := range what {
			log.Info(w)
		}
	}
	return nil
}

// away is the enabled zones not known to be up to date (UpToDate), asked
// only while some root of view is being replaced.
func (a *Authority) away(ctx context.Context, view *store.View, zones map[string]bool, now time.Time) (map[string]bool, error) {
	if a.UpToDate == nil {
		return nil, nil
	}
	roots, err := store.All[*api.MeshCA](view)
	if err != nil || !slices.ContainsFunc(roots, (*api.MeshCA).Rotating) {
		return nil, err
	}
	current, err := a.UpToDate(ctx)
	if err != nil {
		return nil, fmt.Errorf("zones' insights: %w", err)
	}
	away := map[string]bool{}
	for zone, enabled := range zones {
		if enabled && !current[zone] {
			away[zone] = true
		}
	}
	return away, nil
}

// ZonesUpToDate reports, from st's ZoneInsights, the zones that are online
// and were no revision behind when their insight was last written: they
// hold what the global had sent them by then.
func ZonesUpToDate(st store.Store) func(context.Context) (map[string]bool, error) {
	return func(ctx context.Context) (map[string]bool, error) {
		res, err := st.List(ctx, store.ListOptions{Type: "ZoneInsight"})
		if err != nil {
			return nil, err
		}
		now := store.Now()
		out := map[string]bool{}
		for _, r := range res.Items {
			if zi := r.(*api.ZoneInsight); zi.UpToDate(now) {
				out[zi.Name] = true
			}
		}
		return out, nil
	}
}

func (a *Authority) createRoot(ctx context.Context, mesh string, now time.Time, log *zap.Logger) {
	ca, err := NewCA(mesh, now)
	if err != nil {
		log.Error("cannot make a mesh CA", zap.Error(err))
		return
	}
	if _, err := a.Store.Create(ctx, ca); err != nil && !errors.Is(err, store.ErrAlreadyExists) {
		log.Warn("cannot store a mesh CA; will retry on the next change", zap.Error(err))
		return
	}
	log.Info("created the mesh's built-in CA")
}

// Plan is plan with every zone up to date.
func (t Timing) Plan(root *api.MeshCA, zcas map[string]*api.ZoneCA, zones map[string]bool, now time.Time) ([]api.Resource, []api.Key, []string, error) {
	return t.plan(root, zcas, zones, nil, now)
}

// plan decides what brings one mesh's zone CAs (by zone) in line with zones
// at now, and says what it did in words: the puts carry the versions they
// were decided from, so storing them is conditional on nothing having
// changed meanwhile. Nothing to do is no puts and no deletes. A new zone CA
// is stored unconditionally, but always with the root that records it, on
// the root's version: root and zcas must come from one state of the store
// (a store.Mirror's View of a store with transactions), or a root that
// records a CA zcas lacks would have it issued again over the first.
//
// While the root is being replaced it also takes the rotation's steps
// (see RotateRoot): once the next root has been published for Published,
// it signs every new intermediate, so each zone's current one is due and
// is replaced as a renewal is (its next one, signed by the next root,
// published first); once every zone of zones has issued from one for
// Published, the next root takes the old one's place, alone. Those two
// steps, a zone moving to the next root's intermediate and the old root
// retiring, wait while a zone of away (enabled, not known to hold the
// latest records) is: it would refuse the certificates they bring until it
// is back. A zone's CA past its end moves regardless.
func (t Timing) plan(root *api.MeshCA, zcas map[string]*api.ZoneCA, zones, away map[string]bool, now time.Time) ([]api.Resource, []api.Key, []string, error) {
	if _, err := parseCert(root.CertPEM); err != nil {
		return nil, nil, nil, fmt.Errorf("mesh %s root: %w", root.Mesh, err)
	}
	next := api.DeepCopy(root).(*api.MeshCA)
	var (
		puts    []api.Resource
		deletes []api.Key
		what    []string
	)
	for _, zone := range slices.Sorted(maps.Keys(zcas)) {
		z := zcas[zone]
		if zones[zone] {
			continue
		}
		revokeCert(next, zone, z.CertPEM, now)
		revokeCert(next, zone, z.NextCertPEM, now)
		deletes = append(deletes, api.KeyOf(z))
		what = append(what, fmt.Sprintf("revoked the CA of zone %s (serial %s): the zone is disabled or gone", zone, serialOf(z.CertPEM)))
	}
	for _, zone := range slices.Sorted(maps.Keys(zones)) {
		z := zcas[zone]
		// The root that signs, and whose intermediates are usable: the
		// next one once it is published. It shares next's records, as
		// they are now.
		signer, signerCert, err := t.issuer(next, now)
		if err != nil {
			return nil, nil, nil, err
		}
		// A zone whose CA another root signed is moving to the next
		// root: its CA is due, and is renewed as any due one is.
		due, moved := "due for renewal", ""
		if z != nil && !signedBy(z.CertPEM, signerCert) {
			due, moved = "moving to the mesh's next root", ", under the mesh's next root"
		}
		var (
			ca   *api.ZoneCA
			recs []api.Intermediate
			verb string
		)
		switch {
		case z == nil:
			ca, recs, err = NewZoneCA(signer, zone, now)
			verb = "issued zone %s its CA (serial %s)"
		case !usable(signer, signerCert, z.CertPEM, now) && !expired(z.CertPEM, now) &&
			(!usable(signer, signerCert, z.NextCertPEM, now) || staleNext(z, now)):
			// Due, but the next one is no good to switch to: a new next
			// one is published first, and the current one, still valid,
			// issues meanwhile.
			var rec api.Intermediate
			ca = api.DeepCopy(z).(*api.ZoneCA)
			ca.NextCertPEM, ca.NextKeyPEM, rec, err = newIntermediate(signer, zone, now)
			recs = []api.Intermediate{rec}
			verb = "prepared the next CA of zone %s, " + due + " (current serial %s)"
		case !usable(signer, signerCert, z.CertPEM, now) && !expired(z.CertPEM, now) && !publishedFor(z.NextCertPEM, now, t.published()):
			continue // the next one's records reach the zones first
		case moved != "" && len(away) > 0 && !expired(z.CertPEM, now):
			continue // moves once every zone holds the next one's records
		case !usable(signer, signerCert, z.CertPEM, now):
			ca, recs, err = advance(signer, signerCert, z, now)
			verb = "renewed the CA of zone %s (serial %s)" + moved
		case !usable(signer, signerCert, z.NextCertPEM, now) || staleNext(z, now):
			var rec api.Intermediate
			ca = api.DeepCopy(z).(*api.ZoneCA)
			ca.NextCertPEM, ca.NextKeyPEM, rec, err = newIntermediate(signer, zone, now)
			recs = []api.Intermediate{rec}
			verb = "prepared the next CA of zone %s (current serial %s)"
		default:
			continue
		}
		if err != nil {
			return nil, nil, nil, err
		}
		if z != nil {
			ca.Version = z.Version // replaces what was decided from
		}
		next.Intermediates = append(next.Intermediates, recs...)
		puts = append(puts, ca)
		what = append(what, fmt.Sprintf(verb, zone, serialOf(ca.CertPEM)))
	}
	// An expired intermediate is refused for that alone: its record and
	// its list can go.
	next.Intermediates = slices.DeleteFunc(next.Intermediates, func(in api.Intermediate) bool { return !now.Before(in.NotAfter) })
	// Records made before they kept their certificate get it from their
	// zone's CA, where it still is (proxyless applications trust them).
	filled := fillCertificates(next, zcas)
	// The old root retires in a pass that changes no zone's CA: once the
	// zones' CAs, as stored, all issue under the next root.
	var retired string
	if len(puts) == 0 && len(deletes) == 0 && len(away) == 0 && t.retirable(next, zcas, zones, now) {
		retired = serialOf(next.CertPEM)
		retireRoot(next)
		what = append(what, fmt.Sprintf("retired the mesh's previous root CA (serial %s): every zone issues under its new root (serial %s)", retired, serialOf(next.CertPEM)))
	}
	// A root that never signed an intermediate needs no list.
	listed := len(next.Intermediates) > 0 || next.CRLPEM != ""
	if len(puts) > 0 || len(deletes) > 0 || filled || retired != "" || len(next.Intermediates) != len(root.Intermediates) || (listed && crlDue(next, now)) {
		if err := SignRootCRL(next, now); err != nil {
			return nil, nil, nil, err
		}
		puts = append([]api.Resource{next}, puts...)
	}
	return puts, deletes, what, nil
}

// fillCertificates sets the certificate of each record of root that lacks
// one from its zone's CA (current or next), and reports whether it set any.
func fillCertificates(root *api.MeshCA, zcas map[string]*api.ZoneCA) bool {
	filled := false
	for i, in := range root.Intermediates {
		z := zcas[in.Zone]
		if in.CertPEM != "" || z == nil {
			continue
		}
		for _, c := range []string{z.CertPEM, z.NextCertPEM} {
			if c != "" && serialOf(c) == in.Serial {
				root.Intermediates[i].CertPEM, filled = c, true
			}
		}
	}
	return filled
}

// NextPublished is how long a zone's next intermediate has been signed,
// and its records sent to every zone, at least before a renewal issues
// from it.
const NextPublished = time.Hour

// expired says whether certPEM is past its NotAfter (or no certificate).
func expired(certPEM string, now time.Time) bool {
	cert, err := parseCert(certPEM)
	return err != nil || !now.Before(cert.NotAfter)
}

// publishedFor says whether certPEM was signed at least d before now.
func publishedFor(certPEM string, now time.Time, d time.Duration) bool {
	cert, err := parseCert(certPEM)
	return err == nil && !now.Before(cert.NotBefore.Add(backdate+d))
}

// staleNext says whether z's next intermediate is no younger than the one
// that issues (both signed at once, as a zone's first pair is) while that
// one is past half its life: both would reach the two-thirds mark together,
// and the renewal would then issue from a pair signed that moment, whose
// records the other zones do not hold yet. A next one signed now is
// published long before it issues.
func staleNext(z *api.ZoneCA, now time.Time) bool {
	cur, err := parseCert(z.CertPEM)
	if err != nil {
		return false
	}
	nxt, err := parseCert(z.NextCertPEM)
	if err != nil {
		return false
	}
	return !nxt.NotBefore.After(cur.NotBefore) && now.After(cur.NotBefore.Add(cur.NotAfter.Sub(cur.NotBefore)/2))
}

// ErrNoZoneCA is a rotation asked of a zone that has no CA in the mesh.
var ErrNoZoneCA = errors.New("no CA for the zone in this mesh")

// Rotate gives zone a new intermediate in mesh, in one transaction
// conditional on what it read: the next intermediate, whose revocation list
// every zone already holds, issues from now on, and a new next one is
// signed. The previous intermediate stays trusted until it expires, so the
// certificates it issued keep working while the zone replaces them; with
// revokePrevious the root revokes it at once instead (for a key that may
// have leaked), and the next one too (the zone holds both keys side by
// side), and the zone issues from a pair signed now: connections set up
// with the old certificates are refused from then until the zone has
// issued new ones, and the zones that have not yet received the new pair's
// records refuse its new certificates until they do (seconds). It returns the record of
// the intermediate that now issues; ErrNoZoneCA when the zone has none (it
// is not enabled, or the mesh has no mTLS), ErrConflict when something
// changed meanwhile.
//
// While the mesh's root is being replaced, the intermediates it signs are
// the next root's once that has been published (Timing's Plan); a
// rotation without revokePrevious still switches to the zone's published
// next intermediate, the current root's until the authority has prepared
// one of the next root.
func (t Timing) Rotate(ctx context.Context, st store.Store, mesh, zone string, revokePrevious bool, now time.Time) (api.Intermediate, error) {
	fail := func(err error) (api.Intermediate, error) {
		return api.Intermediate{}, fmt.Errorf("rotate the CA of zone %s in mesh %s: %w", zone, mesh, err)
	}
	r, err := st.Get(ctx, api.Key{Type: "MeshCA", Mesh: mesh, Name: CAName})
	if errors.Is(err, store.ErrNotFound) {
		return fail(fmt.Errorf("%w (the mesh has no CA: is mTLS enabled?)", ErrNoZoneCA))
	}
	if err != nil {
		return fail(err)
	}
	root := r.(*api.MeshCA)
	signer, signerCert, err := t.issuer(root, now)
	if err != nil {
		return fail(err)
	}
	r, err = st.Get(ctx, api.Key{Type: "ZoneCA", Mesh: mesh, Name: zone})
	if errors.Is(err, store.ErrNotFound) {
		return fail(fmt.Errorf("%w (is the zone enabled?)", ErrNoZoneCA))
	}
	if err != nil {
		return fail(err)
	}
	old := r.(*api.ZoneCA)
	var ca *api.ZoneCA
	var recs []api.Intermediate
	if revokePrevious {
		// The zone's ZoneCA holds the next key beside the current one:
		// what may have leaked the one may have leaked the other. Both
		// are revoked, and the zone issues from a pair signed now.
		revokeCert(root, zone, old.CertPEM, now)
		revokeCert(root, zone, old.NextCertPEM, now)
		if ca, recs, err = NewZoneCA(signer, zone, now); err == nil {
			ca.Version = old.Version
		}
	} else {
		// While the root is being replaced, the zone's next intermediate
		// may still be the current root's (the authority has not yet
		// prepared one of the next root): the zone switches to it, whose
		// list every zone holds, rather than to a pair signed now, and
		// the authority moves it on to the next root as it does every
		// zone. (The current root stays trusted until every zone has.)
		if root.Rotating() && !usable(signer, signerCert, old.NextCertPEM, now) {
			if cur, err := parseCert(root.CertPEM); err == nil && usable(root, cur, old.NextCertPEM, now) {
				signer, signerCert = root, cur
			}
		}
		ca, recs, err = advance(signer, signerCert, old, now)
	}
	if err != nil {
		return fail(err)
	}
	root.Intermediates = append(root.Intermediates, recs...)
	if err := SignRootCRL(root, now); err != nil {
		return fail(err)
	}
	if _, err := st.Apply(ctx, []api.Resource{root, ca}, nil); err != nil {
		return fail(err)
	}
	serial := serialOf(ca.CertPEM)
	i := slices.IndexFunc(root.Intermediates, func(in api.Intermediate) bool { return in.Serial == serial })
	return root.Intermediates[i], nil
}
