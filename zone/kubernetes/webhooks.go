package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api/crd"
)

// The webhook configurations the zone CP keeps in the cluster, and the
// paths its webhook server answers on.
const (
	MutatingConfigName   = "ursa-sidecar-injector"
	ValidatingConfigName = "ursa-validator"
	InjectPath           = "/inject"
	ValidatePath         = "/validate"
	// FieldManager is the control plane's server-side apply manager.
	FieldManager = "ursa-control-plane"
)

// Applier is what the webhooks need of pkg/kube's Client.
type Applier interface {
	APIClient
	Apply(ctx context.Context, path, fieldManager string, obj, out any) error
}

// ServiceRef is the Service in front of the webhook server, inside the
// cluster.
type ServiceRef struct {
	Namespace, Name string
	Port            int
}

// Webhooks are the zone CP's admission webhooks and their registration.
type Webhooks struct {
	Client    Applier
	Injector  *Injector
	Validator *Validator
	// CABundle is the PEM of the CA of the webhook server's certificate,
	// what the apiserver verifies it with.
	CABundle []byte
	// URL, when set, is the webhook server's base URL
	// (https://HOST:PORT), registered instead of Service: a CP outside the
	// cluster.
	URL     string
	Service ServiceRef
	Log     *zap.Logger
}

// Handler serves the webhooks: POST /inject and POST /validate.
func (w *Webhooks) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("POST "+InjectPath, ReviewHandler(w.Injector.Review))
	mux.Handle("POST "+ValidatePath, ReviewHandler(w.Validator.Review))
	return mux
}

// clientConfig is where the apiserver calls path.
func (w *Webhooks) clientConfig(path string) obj {
	cc := obj{"caBundle": w.CABundle} // []byte: base64, as the API wants
	if w.URL != "" {
		cc["url"] = strings.TrimRight(w.URL, "/") + path
	} else {
		cc["service"] = obj{"namespace": w.Service.Namespace, "name": w.Service.Name, "port": w.Service.Port, "path": path}
	}
	return cc
}

// Configurations returns the MutatingWebhookConfiguration and the
// ValidatingWebhookConfiguration as they are applied. Both fail closed
// (failurePolicy Fail): a pod created while the CP is down would run
// without its sidecar, and a global object would be editable. The
// control plane's own writes never reach the validating webhook
// (matchConditions), so they never wait for it.
func (w *Webhooks) Configurations() (mutating, validating obj) {
	mutating = obj{
		"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
		"metadata": obj{"name": MutatingConfigName},
		"webhooks": []any{obj{
			"name":                    "sidecar-injector.ursa.io",
			"clientConfig":            w.clientConfig(InjectPath),
			"rules":                   []any{obj{"apiGroups": []string{""}, "apiVersions": []string{"v1"}, "operations": []string{"CREATE"}, "resources": []string{"pods"}, "scope": "Namespaced"}},
			"namespaceSelector":       obj{"matchLabels": obj{LabelSidecarInjection: "enabled"}},
			"objectSelector":          obj{"matchExpressions": []any{obj{"key": LabelSidecarInjection, "operator": "NotIn", "values": []string{"disabled"}}}},
			"failurePolicy":           "Fail",
			"sideEffects":             "None",
			"admissionReviewVersions": []string{"v1"},
			"timeoutSeconds":          10,
			"reinvocationPolicy":      "Never",
		}},
	}
	hook := obj{
		"name":                    "validator.ursa.io",
		"clientConfig":            w.clientConfig(ValidatePath),
		"rules":                   []any{obj{"apiGroups": []string{crd.Group}, "apiVersions": []string{"*"}, "operations": []string{"CREATE", "UPDATE", "DELETE"}, "resources": []string{"*"}, "scope": "*"}},
		"failurePolicy":           "Fail",
		"sideEffects":             "None",
		"admissionReviewVersions": []string{"v1"},
		"timeoutSeconds":          10,
	}
	// The cluster's own collectors' deletes (a namespace being deleted,
	// an owner gone) never wait for the webhook either: with the control
	// plane down, a namespace with Ursa objects would stay Terminating.
	collectors := make([]string, len(clusterCollectors))
	for i, c := range clusterCollectors {
		collectors[i] = celString(c)
	}
	conditions := []any{obj{"name": "not-a-cluster-collector",
		"expression": "!(request.operation == 'DELETE' && request.userInfo.username in [" + strings.Join(collectors, ", ") + "])"}}
	if self := w.Validator.Self; self != "" {
		conditions = append(conditions, obj{"name": "not-the-control-plane", "expression": "request.userInfo.username != " + celString(self)})
	}
	hook["matchConditions"] = conditions
	validating = obj{
		"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
		"metadata": obj{"name": ValidatingConfigName},
		"webhooks": []any{hook},
	}
	return mutating, validating
}

// celString quotes s as a CEL string literal.
func celString(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

// Register applies both configurations (server-side, forcing: an edit of
// them is undone). Installed by the chart, they exist already, with the
// release's metadata and no webhooks, and the CP's grant is to patch them
// only; its fields are its own, so that an upgrade of the release leaves
// them (and it sets no metadata of the release's, such as the
// app.kubernetes.io/managed-by label). A CP run outside the cluster, with
// the rights to, makes them.
func (w *Webhooks) Register(ctx context.Context) error {
	m, v := w.Configurations()
	if err := w.Client.Apply(ctx, "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/"+MutatingConfigName, FieldManager, m, nil); err != nil {
		return fmt.Errorf("register the mutating webhook: %w", err)
	}
	if err := w.Client.Apply(ctx, "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/"+ValidatingConfigName, FieldManager, v, nil); err != nil {
		return fmt.Errorf("register the validating webhook: %w", err)
	}
	return nil
}

// Keep registers the configurations now and again every period until ctx
// ends, so that a configuration deleted or edited is put back. A failed
// registration is logged and retried at the next period.
func (w *Webhooks) Keep(ctx context.Context, period time.Duration) error {
	registered := false
	for {
		if err := w.Register(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			w.Log.Warn("webhook configurations not registered; retrying", zap.Error(err), zap.Duration("in", period))
		} else if !registered {
			registered = true
			w.Log.Info("webhook configurations registered", zap.String("mutating", MutatingConfigName), zap.String("validating", ValidatingConfigName), zap.String("url", w.URL))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(period):
		}
	}
}

// SelfUser returns the user the client authenticates as
// (SelfSubjectReview): the validating webhook's Self.
func SelfUser(ctx context.Context, c APIClient) (string, error) {
	var r struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Status     struct {
			UserInfo UserInfo `json:"userInfo"`
		} `json:"status"`
	}
	r.APIVersion, r.Kind = "authentication.k8s.io/v1", "SelfSubjectReview"
	if err := c.Do(ctx, http.MethodPost, "/apis/authentication.k8s.io/v1/selfsubjectreviews", &r, &r); err != nil {
		return "", fmt.Errorf("who am I (SelfSubjectReview): %w", err)
	}
	if r.Status.UserInfo.Username == "" {
		return "", errors.New("who am I (SelfSubjectReview): the apiserver named no user")
	}
	return r.Status.UserInfo.Username, nil
}

// WebhookNames are the names the webhook server's certificate must carry:
// the URL's host, else the Service's DNS names.
func WebhookNames(webhookURL string, svc ServiceRef) ([]string, error) {
	if webhookURL != "" {
		u, err := url.Parse(webhookURL)
		if err != nil || u.Scheme != "https" || u.Hostname() == "" || (u.Path != "" && u.Path != "/") {
			return nil, fmt.Errorf("webhook.url: %q is not https://HOST:PORT", webhookURL)
		}
		return []string{u.Hostname()}, nil
	}
	base := svc.Name + "." + svc.Namespace
	return []string{svc.Name, base, base + ".svc", base + ".svc.cluster.local"}, nil
}

// NamespaceGetter returns a Namespace from the apiserver, for the injector.
func NamespaceGetter(c APIClient) func(ctx context.Context, name string) (*Namespace, error) {
	return func(ctx context.Context, name string) (*Namespace, error) {
		var ns Namespace
		if err := c.Do(ctx, http.MethodGet, "/api/v1/namespaces/"+url.PathEscape(name), nil, &ns); err != nil {
			return nil, err
		}
		return &ns, nil
	}
}

// NamespaceCacheTTL is how long the injector reuses a Namespace it read:
// a Deployment scaled to thousands of pods costs one read of their
// Namespace every NamespaceCacheTTL, not one per pod, and a change of the
// namespace's mesh annotation reaches new pods within it. (Whether a
// namespace is injected at all the API server decides, by the webhook's
// namespaceSelector.)
const NamespaceCacheTTL = 2 * time.Second

// CachedNamespaces remembers what get returns, per name, for ttl; errors
// are not remembered.
func CachedNamespaces(get func(ctx context.Context, name string) (*Namespace, error), ttl time.Duration) func(ctx context.Context, name string) (*Namespace, error) {
	return (&namespaceCache{get: get, ttl: ttl, now: time.Now, seen: map[string]cachedNamespace{}}).lookup
}

type cachedNamespace struct {
	ns *Namespace
	at time.Time
}

type namespaceCache struct {
	get func(ctx context.Context, name string) (*Namespace, error)
	ttl time.Duration
	now func() time.Time

	mu   sync.Mutex
	seen map[string]cachedNamespace
}

func (c *namespaceCache) lookup(ctx context.Context, name string) (*Namespace, error) {
	now := c.now()
	c.mu.Lock()
	hit, ok := c.seen[name]
	if ok && now.Sub(hit.at) >= c.ttl {
		delete(c.seen, name) // expired (a deleted namespace's entry stays until looked up; few)
		ok = false
	}
	c.mu.Unlock()
	if ok {
		return hit.ns, nil
	}
	ns, err := c.get(ctx, name)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.seen[name] = cachedNamespace{ns: ns, at: now}
	c.mu.Unlock()
	return ns, nil
}
