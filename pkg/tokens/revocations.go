package tokens

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/apiserver"
	"github.com/ursamesh/ursa/pkg/store"
)

// revocations are the TokenRevocations of the control plane that verifies
// a kind of token (zone tokens at the global, dataplane and ingress tokens
// at a zone): single tokens refused before they expire, every other token
// of their key still valid. With a memory, it reads them all at once and
// takes them as read for that long, as localKeys does its keys: a zone's
// proxies all reconnect after a restart, and every replica checks each open
// stream's token again every 30 s. One revoked through another replica is
// then refused here within the memory (its stream ends at the next sweep
// either way); one revoked here at once. Without one, each check reads the
// token's revocation. It is safe for concurrent use.
type revocations struct {
	st     store.Store
	now    func() time.Time
	memory time.Duration

	// reads makes concurrent checks that find the set stale (a zone's
	// proxies reconnecting at once) share one List.
	reads singleflight.Group

	mu     sync.Mutex
	names  map[string]bool // RevocationNames as last read
	readAt time.Time
	// added are the revocations written through this value, until they
	// expire: a verdict without a read, even while the store is down, and
	// not lost by a read that began before one was written.
	added map[string]time.Time
}

func newRevocations(st store.Store, now func() time.Time, memory time.Duration) *revocations {
	return &revocations{st: st, now: now, memory: memory, added: map[string]time.Time{}}
}

// revokedHere reports whether name was revoked through this value, and
// forgets those whose tokens have expired.
func (r *revocations) revokedHere(name string, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for n, until := range r.added {
		if now.After(until) {
			delete(r.added, n)
		}
	}
	_, ok := r.added[name]
	return ok
}

// check returns ErrTokenRevoked, wrapped with what, when the token whose
// jti is id was revoked; an error of the store otherwise, or nil. A token
// without an ID cannot have been revoked on its own.
func (r *revocations) check(ctx context.Context, id, what string) error {
	if id == "" {
		return nil
	}
	name := api.RevocationName(id)
	now := r.now()
	revoked := r.revokedHere(name, now)
	switch {
	case revoked:
	case r.memory == 0:
		_, err := r.st.Get(ctx, api.Key{Type: "TokenRevocation", Name: name})
		switch {
		case err == nil:
			revoked = true
		case !errors.Is(err, store.ErrNotFound):
			return fmt.Errorf("read the token's revocation: %w", err)
		}
	default:
		names, err := r.read(ctx, now)
		if err != nil {
			return err
		}
		revoked = names[name]
	}
	if revoked {
		return fmt.Errorf("%w: %s (jti %s) was revoked", ErrTokenRevoked, what, truncate(id))
	}
	return nil
}

// read returns the revocations as read within the memory, reading them
// again (once for every caller at that moment) when they are older.
func (r *revocations) read(ctx context.Context, now time.Time) (map[string]bool, error) {
	r.mu.Lock()
	names, at := r.names, r.readAt
	r.mu.Unlock()
	if names != nil && now.Sub(at) >= 0 && now.Sub(at) < r.memory {
		return names, nil
	}
	v, err, _ := r.reads.Do("", func() (any, error) {
		list, err := r.st.List(ctx, store.ListOptions{Type: "TokenRevocation"})
		if err != nil {
			return nil, fmt.Errorf("read token revocations: %w", err)
		}
		names := make(map[string]bool, len(list.Items))
		for _, it := range list.Items {
			names[it.GetMeta().Name] = true
		}
		r.mu.Lock()
		r.names, r.readAt = names, now
		r.mu.Unlock()
		return names, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(map[string]bool), nil
}

// revoke writes the revocation of one token, kept until a quarter of an
// hour after the token expires (revocationSkew: a replica whose clock is
// behind still takes the token until its own clock says it expired). A
// token revoked already is no error.
func (r *revocations) revoke(ctx context.Context, kind, id, subject string, expiresAt time.Time) error {
	if id == "" {
		return fmt.Errorf("%w: the token has no ID (jti) to revoke it by: revoke its signing key", ErrInvalidArgument)
	}
	until := expiresAt.Add(revocationSkew)
	rev := &api.TokenRevocation{Meta: api.Meta{Type: "TokenRevocation", Name: api.RevocationName(id),
		Labels: map[string]string{api.LabelExpires: strconv.FormatInt(until.Unix(), 10)}},
		ID: id, Token: kind, Subject: subject, ExpiresAt: expiresAt}
	if _, err := r.st.Create(ctx, rev); err != nil && !errors.Is(err, store.ErrAlreadyExists) {
		return fmt.Errorf("write the revocation: %w", err)
	}
	r.mu.Lock()
	r.added[rev.Name] = until
	r.mu.Unlock()
	return nil
}

// RevokedToken says which token a revocation refused: its kind (zone,
// dataplane, ingress), whom it was for, its ID (jti) and until when it
// would have been valid. It is the answer to POST /tokens/KIND/revocations.
type RevokedToken struct {
	Token     string    `json:"token"`
	Subject   string    `json:"subject"`
	ID        string    `json:"id"`
	ExpiresAt time.Time `json:"expiresAt"`
}

// revokeOne is the revocation of a single token of a kind: verify is the
// kind's own check (a token refused already is not revoked again, but said
// to be refused), returning what the revocation records.
func revokeOne(ctx context.Context, revs *revocations, kind, token string, verify func(context.Context, string) (RevokedToken, error)) (RevokedToken, error) {
	t, err := verify(ctx, token)
	switch {
	case errors.Is(err, ErrTokenRevoked):
		return t, nil
	case IsInvalid(err):
		return RevokedToken{}, fmt.Errorf("revoke %s token: %w: not a valid %s token of this control plane, nothing to revoke: %v", kind, ErrInvalidArgument, kind, err)
	case err != nil:
		return RevokedToken{}, fmt.Errorf("revoke %s token: %w", kind, err)
	}
	if err := revs.revoke(ctx, kind, t.ID, t.Subject, t.ExpiresAt); err != nil {
		return RevokedToken{}, fmt.Errorf("revoke %s token: %w", kind, err)
	}
	return t, nil
}

// Paths of the API that revoke one token of a kind (POST {"token": T}):
// a dataplane or ingress token at its zone, a zone token at the global.
const (
	PathDataplaneTokenRevocation = "/tokens/dataplane/revocations"
	PathIngressTokenRevocation   = "/tokens/ingress/revocations"
	PathZoneTokenRevocation      = "/tokens/zone/revocations"
)

// revokeHandler answers POST {"token": T} with revoke's RevokedToken, then
// calls after (the zone ends the streams the token admitted).
func revokeHandler(revoke func(context.Context, string) (RevokedToken, error), after func()) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Token string `json:"token"`
		}
		if !decodeRequest(w, r, &req, `{"token": TOKEN}`) {
			return
		}
		if strings.TrimSpace(req.Token) == "" {
			apiserver.WriteError(w, http.StatusBadRequest, "Invalid request", "the revocation request is not valid",
				api.FieldError{Field: "token", Message: "required: the token to revoke"})
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), opTimeout)
		defer cancel()
		t, err := revoke(ctx, req.Token)
		if err != nil {
			writeStoreError(w, err)
			return
		}
		if after != nil {
			after()
		}
		apiserver.WriteJSON(w, http.StatusOK, t)
	})
}
