package zone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/run"
	"github.com/ursamesh/ursa/pkg/servingcert"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/tokens"
	"github.com/ursamesh/ursa/pkg/xds"
	"github.com/ursamesh/ursa/zone/kubernetes"
)

// WebhookConfig is webhook.* of a Kubernetes zone: its admission webhooks'
// server (sidecar injection, validation of ursa.io objects).
type WebhookConfig struct {
	Addr string `json:"addr" usage:"address of the admission webhooks' HTTPS server (Kubernetes zones)"`
	URL  string `json:"url" usage:"https://HOST:PORT at which the apiserver reaches the webhook server, registered instead of the control plane's Service (a control plane run outside the cluster); the server's certificate names HOST"`
	// Service and ServicePort are the in-cluster Service in
	// kubernetes.systemNamespace that sends ServicePort to Addr.
	Service     string `json:"service" usage:"name of the Service in the control plane's namespace in front of the webhook server (when webhook.url is empty)"`
	ServicePort int    `json:"servicePort" usage:"the webhook port of that Service"`
}

// DefaultWebhookConfig returns webhook.*'s defaults.
func DefaultWebhookConfig() WebhookConfig {
	return WebhookConfig{Addr: ":5443", Service: "ursa-control-plane", ServicePort: 5443}
}

// Validate reports every webhook.* setting that cannot work.
func (c WebhookConfig) Validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		errs = append(errs, fmt.Errorf("webhook.addr: %q is not host:port", c.Addr))
	}
	if c.URL != "" {
		if _, err := kubernetes.WebhookNames(c.URL, kubernetes.ServiceRef{}); err != nil {
			errs = append(errs, err)
		}
	} else if msg := api.CheckName(c.Service); msg != "" {
		errs = append(errs, fmt.Errorf("webhook.service: %q: %s", c.Service, msg))
	}
	if c.ServicePort < 1 || c.ServicePort > 65535 {
		errs = append(errs, fmt.Errorf("webhook.servicePort: %d is not a port", c.ServicePort))
	}
	return errors.Join(errs...)
}

// DefaultCPAddress is the injected sidecars' --cp-address when
// kubernetes.injection.cpAddress is empty: the xDS port of the control
// plane's Service.
func DefaultCPAddress(service, systemNamespace, xdsAddr string) string {
	port := "5678"
	if _, p, err := net.SplitHostPort(xdsAddr); err == nil && p != "0" {
		port = p
	}
	return "grpcs://" + net.JoinHostPort(service+"."+systemNamespace+".svc", port)
}

// InjectionConfig is kubernetes.injection.*.
type InjectionConfig = kubernetes.InjectionConfig

// DefaultInjectionConfig returns kubernetes.injection.*'s defaults: the
// image of this version (deploy/docker/Dockerfile, which holds ursa-dp).
func DefaultInjectionConfig() InjectionConfig {
	return kubernetes.DefaultInjectionConfig("ghcr.io/ursamesh/ursa:" + Version)
}

// validateKubeWebhooks checks webhook.* and kubernetes.injection.* on
// Kubernetes; elsewhere they are unused, and set only by mistake.
func (c Config) validateKubeWebhooks() []error {
	if !c.OnKubernetes() {
		var errs []error
		if c.Webhook.URL != "" {
			errs = append(errs, errors.New("webhook.url: only with environment kubernetes (--environment kubernetes)"))
		}
		return errs
	}
	var errs []error
	if err := c.Webhook.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.Kubernetes.Injection.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errs
}

// addKubeWebhooks serves the admission webhooks over TLS at webhook.addr,
// with a certificate signed by a CA kept in the store, and keeps their
// configurations registered in the cluster. It learns the control plane's
// own user first: the validating webhook lets that user's writes through.
func addKubeWebhooks(ctx context.Context, r *run.Runner, cfg Config, st store.Store, k8s *kubeEnv, xdsCert *servingcert.Serving, log *zap.Logger) error {
	log = log.Named("webhooks")
	self, err := kubernetes.SelfUser(ctx, k8s.client)
	if err != nil {
		return err
	}
	svc := kubernetes.ServiceRef{Namespace: k8s.namespace, Name: cfg.Webhook.Service, Port: cfg.Webhook.ServicePort}
	names, err := kubernetes.WebhookNames(cfg.Webhook.URL, svc)
	if err != nil {
		return err
	}
	cert, err := servingcert.Load(ctx, st, servingcert.Options{Secret: "webhook-server-tls", CommonName: "ursa zone control plane (webhooks) CA, zone " + cfg.Zone,
		Listen: cfg.Webhook.Addr, SANs: names})
	if err != nil {
		return fmt.Errorf("webhook tls: %w", err)
	}
	injCfg := cfg.Kubernetes.Injection
	inj := &kubernetes.Injector{Config: injCfg, CPAddress: injCfg.CPAddress, Namespace: kubernetes.CachedNamespaces(kubernetes.NamespaceGetter(k8s.client), kubernetes.NamespaceCacheTTL)}
	if inj.CPAddress == "" {
		inj.CPAddress = DefaultCPAddress(cfg.Webhook.Service, k8s.namespace, cfg.XDS.Addr)
	}
	if xdsCert != nil {
		inj.CAPEM = xdsCert.CAPEM()
	}
	var version struct{ Major, Minor string }
	if err := k8s.client.Do(ctx, "GET", "/version", nil, &version); err != nil {
		return fmt.Errorf("read the API server's version: %w", err)
	}
	inj.NativeSidecar = kubernetes.NativeSidecars(version.Major, version.Minor)
	if injCfg.NativeSidecar != "auto" {
		inj.NativeSidecar = injCfg.NativeSidecar == "true"
	}
	log.Info("sidecar injection", zap.String("kubernetes", version.Major+"."+version.Minor), zap.Bool("native_sidecar", inj.NativeSidecar))
	validator := &kubernetes.Validator{Self: self, Zone: cfg.Zone, Policies: func(ctx context.Context, typ, mesh string) ([]api.Resource, error) {
		res, err := st.List(ctx, store.ListOptions{Type: typ, Mesh: mesh})
		return res.Items, err
	}}
	hooks := &kubernetes.Webhooks{Client: k8s.client, Injector: inj, Validator: validator,
		CABundle: cert.CAPEM(), URL: cfg.Webhook.URL, Service: svc, Log: log}
	ln, err := net.Listen("tcp", cfg.Webhook.Addr)
	if err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	srv := &http.Server{Handler: hooks.Handler(), TLSConfig: cert.TLSConfig(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 15 * time.Second, IdleTimeout: time.Minute,
		ErrorLog: zap.NewStdLog(log.Named("http"))}
	r.Add("webhooks", run.HTTPServer(srv, tls.NewListener(ln, srv.TLSConfig), cfg.ShutdownGrace.Duration))
	// Every replica registers the same configurations; applying them
	// again changes nothing.
	r.Add("webhook-configurations", run.Func(func(ctx context.Context) error { return hooks.Keep(ctx, 30*time.Second) }))
	log.Info("admission webhooks listening", zap.String("webhook_addr", ln.Addr().String()), zap.String("webhook_url", cfg.Webhook.URL),
		zap.Strings("webhook_tls_names", cert.Names().Strings()), zap.String("control_plane_user", self), zap.String("sidecar_cp_address", inj.CPAddress))
	return nil
}

// withKubeXDSNames adds to the xDS certificate the names injected sidecars
// reach it by (the control plane Service's, as in DefaultCPAddress), when
// the certificate is made here.
func withKubeXDSNames(cfg Config, k8s *kubeEnv) Config {
	if k8s == nil || cfg.XDS.TLSCert != "" || cfg.XDS.Insecure {
		return cfg
	}
	names, _ := kubernetes.WebhookNames("", kubernetes.ServiceRef{Namespace: k8s.namespace, Name: cfg.Webhook.Service})
	cfg.XDS.TLSSAN = append(slices.Clone(cfg.XDS.TLSSAN), names...)
	return cfg
}

// foreignProxyToken says why a Kubernetes zone cannot revoke a token on
// its own: a pod's service-account token is the API server's, which checks
// it (TokenReview) at every connection, and "" for any other token.
func foreignProxyToken(token string) string {
	if !strings.HasPrefix(tokens.UnverifiedSubject(token), kubernetes.ServiceAccountSubjectPrefix) {
		return ""
	}
	return "a Kubernetes service-account token, which the API server checks, not this zone: delete the pod it is bound to, " +
		"or the ServiceAccount, and the API server refuses it"
}

// withKubeTokens is kubeProxyAuth on Kubernetes, a unchanged elsewhere.
func withKubeTokens(a xds.Auth, zone string, k8s *kubeEnv, src ViewSource) xds.Auth {
	if k8s == nil {
		return a
	}
	return kubeProxyAuth(a, &kubernetes.TokenReviewer{Client: k8s.client}, zone, k8s.namespace, src)
}

// kubeProxyAuth extends a zone's proxy authentication with Kubernetes
// service-account tokens: a token whose subject is a service account is
// reviewed by the apiserver (TokenReview, audience "ursa"); when it is
// bound to a pod, the proxy is that pod's ZoneIngress of this zone,
// <pod>.<namespace>, when the pod is in the control plane's namespace
// (systemNamespace) and the pod controller made one of it; else that pod's
// Dataplane, in the mesh that Dataplane is in; and nothing else. Other
// tokens are verified as before.
func kubeProxyAuth(a xds.Auth, rev *kubernetes.TokenReviewer, zone, systemNamespace string, src ViewSource) xds.Auth {
	verify, check := a.Verify, a.Check
	a.Check = func(node *core.Node, c xds.Claims) error {
		// An ingress token names no ingress; a pod's names its own.
		if c.Kind == xds.TokenIngress && c.Name != "" && node.GetId() != c.Name {
			return xds.NotCovered(fmt.Errorf("token is for zone ingress %s, node %q is another", c.Name, node.GetId()))
		}
		if check == nil {
			return nil
		}
		return check(node, c)
	}
	a.Verify = func(ctx context.Context, token string) (xds.Claims, error) {
		if !strings.HasPrefix(tokens.UnverifiedSubject(token), kubernetes.ServiceAccountSubjectPrefix) {
			return verify(ctx, token)
		}
		id, err := rev.Review(ctx, token)
		switch {
		case errors.Is(err, kubernetes.ErrTokenRefused):
			return xds.Claims{}, xds.InvalidToken(err)
		case err != nil:
			return xds.Claims{}, err
		}
		if id.Namespace == systemNamespace {
			view, _ := src.Current()
			switch ing, ok, err := store.Get[*api.ZoneIngress](view, "", id.Dataplane()); {
			case err != nil:
				return xds.Claims{}, err
			case ok && ing.Zone == zone:
				if err := samePod(id, ing.Labels); err != nil {
					return xds.Claims{}, err
				}
				return xds.Claims{Kind: xds.TokenIngress, Zone: zone, Name: id.Dataplane()}, nil
			}
		}
		mesh, dp, err := meshOfDataplane(src, id.Dataplane())
		if err != nil {
			return xds.Claims{}, err
		}
		if err := samePod(id, dp.Labels); err != nil {
			return xds.Claims{}, err
		}
		return xds.Claims{Kind: xds.TokenDataplane, Mesh: mesh, Name: id.Dataplane()}, nil
	}
	return a
}

// samePod says whether what the pod controller made (its labels) is of the
// pod the token is bound to, and not of another pod of the same name: a
// StatefulSet's pod, deleted and made again, whose predecessor's token the
// reviewer may remember for a while. An error the proxy retries: which of
// the two pods is the newer one is not known here, and the controller may
// not have caught up with the new one yet. What names no pod uid passes: a
// Dataplane made before the label was, which the controller labels as it
// starts (the validating webhook keeps anyone else from removing it).
func samePod(id kubernetes.PodIdentity, labels map[string]string) error {
	made := labels[kubernetes.LabelPodUID]
	if made == "" || id.PodUID == "" || made == id.PodUID {
		return nil
	}
	return fmt.Errorf("the token is of pod %s/%s with uid %s, and %s was made of the pod of that name with uid %s (a pod replaced under its name): wait for the pod controller",
		id.Namespace, id.Pod, id.PodUID, id.Dataplane(), made)
}

// meshOfDataplane finds the Dataplane named name, and its mesh. One that does
// not exist yet (the pod controller has not made it) is an error the proxy
// retries, not a refusal of its token.
func meshOfDataplane(src ViewSource, name string) (string, *api.Dataplane, error) {
	view, _ := src.Current()
	meshes, err := view.Items("Mesh")
	if err != nil {
		return "", nil, err
	}
	var found []string
	var made *api.Dataplane
	for k := range meshes {
		if dp, ok, err := store.Get[*api.Dataplane](view, k.Name, name); err != nil {
			return "", nil, err
		} else if ok {
			found, made = append(found, k.Name), dp
		}
	}
	switch len(found) {
	case 0:
		return "", nil, fmt.Errorf("the pod's Dataplane (or ZoneIngress, for an ingress pod) %s does not exist (yet): the pod controller makes it once the pod has an IP", name)
	case 1:
		if made.Labels[kubernetes.LabelManagedBy] != kubernetes.ManagedByController {
			// Named like the pod's, but registered otherwise (a VM's, by
			// a dataplane token): a pod's token covers its pod's alone.
			return "", nil, xds.InvalidToken(fmt.Errorf("Dataplane %s of mesh %s was not made by the pod controller: a pod's token covers only the Dataplane of its pod", name, found[0]))
		}
		return found[0], made, nil
	}
	slices.Sort(found)
	return "", nil, fmt.Errorf("the pod's Dataplane %s exists in %d meshes (%v)", name, len(found), found)
}
