package mtls

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// Timing is how long what is new is published before it is relied on: a
// zone's next intermediate before it issues, the next root before
// intermediates are signed with it, and every zone's intermediate of the
// next root before the old root retires. Its zero value is the default.
type Timing struct {
	// Published is each of those waits; NextPublished when zero. Only
	// tests shorten it: the time is for every zone and every proxy to
	// have received what changed, and for zones to have re-issued their
	// proxies' certificates, including those that were briefly away.
	Published time.Duration
}

func (t Timing) published() time.Duration {
	if t.Published <= 0 {
		return NextPublished
	}
	return t.Published
}

// issuer is the root that signs intermediates at now, as a MeshCA whose
// certificate and key are that root's, sharing root's records: the next
// root once it has been published for Published, or at once when the root
// is past its end (nothing chains to it any more), else the root.
func (t Timing) issuer(root *api.MeshCA, now time.Time) (*api.MeshCA, *x509.Certificate, error) {
	if root.Rotating() && (publishedFor(root.NextCertPEM, now, t.published()) || expired(root.CertPEM, now)) {
		cert, err := parseCert(root.NextCertPEM)
		if err != nil {
			return nil, nil, fmt.Errorf("mesh %s next root: %w", root.Mesh, err)
		}
		view := *root
		view.CertPEM, view.KeyPEM = root.NextCertPEM, root.NextKeyPEM
		return &view, cert, nil
	}
	cert, err := parseCert(root.CertPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("mesh %s root: %w", root.Mesh, err)
	}
	return root, cert, nil
}

// signedBy reports whether certPEM is a certificate issuer signed.
func signedBy(certPEM string, issuer *x509.Certificate) bool {
	cert, err := parseCert(certPEM)
	return err == nil && cert.CheckSignatureFrom(issuer) == nil
}

// retirable reports whether root's rotation is done but for the swap: the
// next root has been published for Published, and every zone of zones
// has a CA whose current and next intermediates the next root signed, the
// current one issuing for Published at least, so that its proxies hold
// certificates of it. The current one has issued at least since its next
// one was signed: a renewal signs the next one as it switches, and a new
// zone CA both at once.
func (t Timing) retirable(root *api.MeshCA, zcas map[string]*api.ZoneCA, zones map[string]bool, now time.Time) bool {
	if !root.Rotating() || !publishedFor(root.NextCertPEM, now, t.published()) {
		return false
	}
	next, err := parseCert(root.NextCertPEM)
	if err != nil {
		return false
	}
	for zone := range zones {
		z := zcas[zone]
		if z == nil || !signedBy(z.CertPEM, next) || !signedBy(z.NextCertPEM, next) || !publishedFor(z.NextCertPEM, now, t.published()) {
			return false
		}
	}
	return true
}

// retireRoot makes root's next root the root, alone, and forgets the
// records of the intermediates the old one signed: nothing trusts them
// any more. A record without its certificate stays until it expires (it
// cannot tell which root signed it). root's revocation list is then to be
// signed again.
func retireRoot(root *api.MeshCA) {
	old, err := parseCert(root.CertPEM)
	if err == nil {
		root.Intermediates = slices.DeleteFunc(root.Intermediates, func(in api.Intermediate) bool {
			return in.CertPEM != "" && signedBy(in.CertPEM, old)
		})
	}
	root.CertPEM, root.KeyPEM, root.CRLPEM = root.NextCertPEM, root.NextKeyPEM, root.NextCRLPEM
	root.NextCertPEM, root.NextKeyPEM, root.NextCRLPEM = "", "", ""
}

// Errors of a root's rotation, before anything is changed.
var (
	// ErrNoMesh is a rotation of a mesh that does not exist.
	ErrNoMesh = errors.New("no such mesh")
	// ErrNoMTLS is a rotation of a mesh without mTLS: it has no root.
	ErrNoMTLS = errors.New("the mesh does not have mTLS enabled: it has no root CA to rotate")
	// ErrNoRootYet is a rotation of a mesh whose root is not made yet
	// (mTLS was just enabled).
	ErrNoRootYet = errors.New("the mesh's root CA is not made yet")
	// ErrRootRotating is a rotation asked while one is under way.
	ErrRootRotating = errors.New("the mesh's root CA is already being rotated")
)

// RotateRoot starts replacing mesh's root CA, in one write conditional on
// the MeshCA it read: it makes the next root (ECDSA P-256, ten years, a
// common name of its own so that no verifier confuses the two) and its
// revocation list, and stores them beside the root. From then on every
// proxy trusts both roots; the authority (Timing's Plan) takes the next
// steps as their time comes, and retires the old root once no zone issues
// under it. The next root's key stays where the root's is. It returns the
// mesh's status after the write; ErrNoMesh, ErrNoMTLS, ErrNoRootYet or
// ErrRootRotating, changing nothing, when it cannot start; ErrConflict
// when the CAs changed meanwhile.
func (t Timing) RotateRoot(ctx context.Context, st store.Store, mesh string, now time.Time) (api.MeshRootStatus, error) {
	fail := func(err error) (api.MeshRootStatus, error) {
		return api.MeshRootStatus{}, fmt.Errorf("rotate the root CA of mesh %s: %w", mesh, err)
	}
	root, err := meshRoot(ctx, st, mesh)
	if err != nil {
		return fail(err)
	}
	if root.Rotating() {
		return fail(fmt.Errorf("%w: its next root (serial %s) was published at %s; the old one retires once every zone issues under the next one",
			ErrRootRotating, serialOf(root.NextCertPEM), publishedAt(root.NextCertPEM).Format(time.RFC3339)))
	}
	if err := publishNextRoot(root, now); err != nil {
		return fail(err)
	}
	if _, err := st.Apply(ctx, []api.Resource{root}, nil); err != nil {
		return fail(err)
	}
	return t.StatusOf(root, nil, now), nil
}

// meshRoot is mesh's root CA as stored: ErrNoMesh, ErrNoMTLS or
// ErrNoRootYet when it has none, saying why.
func meshRoot(ctx context.Context, st store.Store, mesh string) (*api.MeshCA, error) {
	r, err := st.Get(ctx, api.Key{Type: "Mesh", Name: mesh})
	if errors.Is(err, store.ErrNotFound) {
		return nil, ErrNoMesh
	}
	if err != nil {
		return nil, err
	}
	if !r.(*api.Mesh).MTLSEnabled() {
		return nil, ErrNoMTLS
	}
	r, err = st.Get(ctx, api.Key{Type: "MeshCA", Mesh: mesh, Name: CAName})
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w (mTLS was just enabled: try again in a moment)", ErrNoRootYet)
	}
	if err != nil {
		return nil, err
	}
	return r.(*api.MeshCA), nil
}

// publishNextRoot sets root's next root, with its revocation list, and
// signs the root's again. root must hold its key and not be rotating.
func publishNextRoot(root *api.MeshCA, now time.Time) error {
	if root.KeyPEM == "" {
		return errors.New("the root's key is not in this store: rotate it where the mesh's CA was made")
	}
	made, err := newRoot(root.Mesh, fmt.Sprintf("ursa mesh %s root %.8s", root.Mesh, serial().Text(16)), now)
	if err != nil {
		return err
	}
	root.NextCertPEM, root.NextKeyPEM = made.CertPEM, made.KeyPEM
	return SignRootCRL(root, now)
}

// publishedAt is when certPEM was signed (its NotBefore is backdated).
func publishedAt(certPEM string) time.Time {
	cert, err := parseCert(certPEM)
	if err != nil {
		return time.Time{}
	}
	return cert.NotBefore.Add(backdate).UTC()
}

// StatusOf is the status of root with its zones' CAs zcas at now.
func (t Timing) StatusOf(root *api.MeshCA, zcas []*api.ZoneCA, now time.Time) api.MeshRootStatus {
	out := api.MeshRootStatus{Mesh: root.Mesh, Phase: api.RootPhaseStable, Root: rootCertOf(root.CertPEM)}
	var next *x509.Certificate
	if root.Rotating() {
		n := rootCertOf(root.NextCertPEM)
		out.Next, out.Phase = &n, api.RootPhasePublishing
		out.SwitchFrom = n.Published.Add(t.published())
		next, _ = parseCert(root.NextCertPEM)
	}
	switched, started := true, false
	for _, z := range zcas {
		zr := api.MeshRootZone{Zone: z.Name, Serial: serialOf(z.CertPEM), OnNext: next != nil && signedBy(z.CertPEM, next)}
		switched = switched && zr.OnNext
		started = started || zr.OnNext || next != nil && signedBy(z.NextCertPEM, next)
		out.Zones = append(out.Zones, zr)
	}
	slices.SortFunc(out.Zones, func(a, b api.MeshRootZone) int { return strings.Compare(a.Zone, b.Zone) })
	// What the CAs show first, the clock second: a control plane whose
	// clock is behind the authority's still reports its steps.
	switch {
	case next == nil:
	case started && switched:
		out.Phase = api.RootPhaseRetiring
	case started || !now.Before(out.SwitchFrom):
		out.Phase = api.RootPhaseSwitching
	}
	return out
}

func rootCertOf(certPEM string) api.MeshRootCert {
	out := api.MeshRootCert{CertPEM: certPEM, Serial: serialOf(certPEM), Published: publishedAt(certPEM)}
	if cert, err := parseCert(certPEM); err == nil {
		out.NotAfter = cert.NotAfter.UTC()
	}
	return out
}
