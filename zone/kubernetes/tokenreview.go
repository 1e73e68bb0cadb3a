package kubernetes

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// ServiceAccountSubjectPrefix starts the sub claim of every Kubernetes
// service-account token: system:serviceaccount:NAMESPACE:NAME.
const ServiceAccountSubjectPrefix = "system:serviceaccount:"

// podNameExtra and podUIDExtra are the TokenReview's user extras that say
// which pod a bound token belongs to.
const (
	podNameExtra = "authentication.kubernetes.io/pod-name"
	podUIDExtra  = "authentication.kubernetes.io/pod-uid"
)

// ErrTokenRefused is wrapped by TokenReviewer.Review's error for a token
// the apiserver (or the reviewer) refuses; any other error means it could
// not be reviewed now.
var ErrTokenRefused = errors.New("service-account token refused")

// PodIdentity is who a bound service-account token speaks for.
type PodIdentity struct {
	Pod, Namespace, ServiceAccount, PodUID string
}

// Dataplane is the name of the pod's Dataplane, <pod>.<namespace>.
func (p PodIdentity) Dataplane() string { return p.Pod + "." + p.Namespace }

// APIClient is what the reviewer needs of pkg/kube's Client.
type APIClient interface {
	Do(ctx context.Context, method, path string, in, out any) error
}

// TokenReviewer checks sidecars' service-account tokens with the apiserver's
// TokenReview, for audience TokenAudience, and remembers the tokens it
// admitted until they expire, for at most CacheFor: a zone's proxies all
// reconnect at once after a CP restart, and each reconnect would otherwise
// be one more call to the apiserver. Refusals are not remembered. It is safe
// for concurrent use.
type TokenReviewer struct {
	Client APIClient
	// CacheFor bounds how long an admitted token is remembered; a minute
	// when zero. A deleted pod's token is still admitted until then (and
	// the apiserver itself remembers an authenticated token for 10 s), but
	// its Dataplane, deleted with the pod, gives its proxy nothing; one
	// made of a new pod of the same name carries that pod's uid
	// (LabelPodUID), which the old token's PodUID does not match.
	CacheFor time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time

	mu      sync.Mutex
	cache   map[[32]byte]cached
	reviews int
}

type cached struct {
	id    PodIdentity
	until time.Time
}

// maxCached bounds the cache; past it, expired entries are dropped first,
// then everything.
const maxCached = 50000

// Reviews returns how many TokenReviews were sent, for tests.
func (t *TokenReviewer) Reviews() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.reviews
}

func (t *TokenReviewer) now() time.Time {
	if t.Now != nil {
		return t.Now()
	}
	return time.Now()
}

// tokenReview is an authentication.k8s.io/v1 TokenReview.
type tokenReview struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Spec       struct {
		Token     string   `json:"token"`
		Audiences []string `json:"audiences"`
	} `json:"spec"`
	Status struct {
		Authenticated bool `json:"authenticated"`
		User          struct {
			Username string              `json:"username"`
			Extra    map[string][]string `json:"extra"`
		} `json:"user"`
		Audiences []string `json:"audiences"`
		Error     string   `json:"error"`
	} `json:"status"`
}

// Review returns the pod a bound service-account token speaks for. A token
// that is not valid for TokenAudience, has expired, is not bound to a pod,
// or whose pod is gone is an error wrapping ErrTokenRefused, with the
// apiserver's reason.
func (t *TokenReviewer) Review(ctx context.Context, token string) (PodIdentity, error) {
	token = strings.TrimSpace(token)
	key := sha256.Sum256([]byte(token))
	now := t.now()
	t.mu.Lock()
	if c, ok := t.cache[key]; ok && now.Before(c.until) {
		t.mu.Unlock()
		return c.id, nil
	}
	t.reviews++
	t.mu.Unlock()

	var tr tokenReview
	tr.APIVersion, tr.Kind = "authentication.k8s.io/v1", "TokenReview"
	tr.Spec.Token, tr.Spec.Audiences = token, []string{TokenAudience}
	if err := t.Client.Do(ctx, http.MethodPost, "/apis/authentication.k8s.io/v1/tokenreviews", &tr, &tr); err != nil {
		return PodIdentity{}, fmt.Errorf("token review: %w", err)
	}
	st := tr.Status
	if !st.Authenticated {
		why := st.Error
		if why == "" {
			why = "not authenticated"
		}
		return PodIdentity{}, fmt.Errorf("%w: %s", ErrTokenRefused, why)
	}
	ns, sa, ok := strings.Cut(strings.TrimPrefix(st.User.Username, ServiceAccountSubjectPrefix), ":")
	if !strings.HasPrefix(st.User.Username, ServiceAccountSubjectPrefix) || !ok || ns == "" || sa == "" {
		return PodIdentity{}, fmt.Errorf("%w: user %q is not a service account", ErrTokenRefused, st.User.Username)
	}
	pod := first(st.User.Extra[podNameExtra])
	if pod == "" {
		return PodIdentity{}, fmt.Errorf("%w: the token of service account %s/%s is not bound to a pod (give the sidecar the projected token the injector mounts)", ErrTokenRefused, ns, sa)
	}
	// An apiserver that ignores spec.audiences says which it checked.
	if len(st.Audiences) > 0 && !slices.Contains(st.Audiences, TokenAudience) {
		return PodIdentity{}, fmt.Errorf("%w: the token is for audiences %v, not %q", ErrTokenRefused, st.Audiences, TokenAudience)
	}
	id := PodIdentity{Pod: pod, Namespace: ns, ServiceAccount: sa, PodUID: first(st.User.Extra[podUIDExtra])}
	until := now.Add(t.cacheFor())
	if exp, ok := unverifiedExpiry(token); ok && exp.Before(until) {
		until = exp
	}
	t.mu.Lock()
	if t.cache == nil {
		t.cache = map[[32]byte]cached{}
	}
	if len(t.cache) >= maxCached {
		for k, c := range t.cache {
			if !now.Before(c.until) {
				delete(t.cache, k)
			}
		}
		if len(t.cache) >= maxCached {
			clear(t.cache)
		}
	}
	t.cache[key] = cached{id: id, until: until}
	t.mu.Unlock()
	return id, nil
}

func (t *TokenReviewer) cacheFor() time.Duration {
	if t.CacheFor > 0 {
		return t.CacheFor
	}
	return time.Minute
}

func first(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

// unverifiedExpiry reads a JWT's exp claim without checking anything: the
// apiserver has checked the token, this only bounds how long it is
// remembered.
func unverifiedExpiry(token string) (time.Time, bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}, false
	}
	var c struct {
		Exp int64 `json:"exp"`
	}
	if json.Unmarshal(b, &c) != nil || c.Exp == 0 {
		return time.Time{}, false
	}
	return time.Unix(c.Exp, 0), true
}
