package zone

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/api/crd"
	"github.com/ursamesh/ursa/pkg/kube"
	"github.com/ursamesh/ursa/pkg/leader"
	"github.com/ursamesh/ursa/pkg/run"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/store/backend"
	kubestore "github.com/ursamesh/ursa/pkg/store/kubernetes"
	"github.com/ursamesh/ursa/pkg/tokens"
	k8szone "github.com/ursamesh/ursa/zone/kubernetes"
)

// Environments a zone runs in (Config.Environment).
const (
	EnvironmentUniversal  = "universal"
	EnvironmentKubernetes = "kubernetes"
)

// DefaultSystemNamespace holds the control plane's objects on Kubernetes when
// neither the configuration nor the pod's own namespace names one.
const DefaultSystemNamespace = "ursa-system"

// Lease durations. On Kubernetes a replica that dies is replaced within one
// duration and a tick (the issue asks for a handover under 5 s); each lease
// is renewed every third of it, which costs the API server one write a
// second per leader-only job. The store's leases of a universal zone keep
// their longer duration: a PostgreSQL write per renewal is dearer.
const (
	kubeLeaseDuration  = 3 * time.Second
	storeLeaseDuration = 15 * time.Second
)

// OnKubernetes reports whether the zone runs in a Kubernetes cluster.
func (c Config) OnKubernetes() bool { return c.Environment == EnvironmentKubernetes }

func (c Config) validateEnvironment() []error {
	var errs []error
	switch c.Environment {
	case EnvironmentUniversal:
		if c.Kubeconfig != "" {
			errs = append(errs, errors.New("kubeconfig: only with environment kubernetes (--environment kubernetes)"))
		}
		if c.Kubernetes.SystemNamespace != "" {
			errs = append(errs, errors.New("kubernetes.systemNamespace: only with environment kubernetes (--environment kubernetes)"))
		}
	case EnvironmentKubernetes:
		if c.Store != "memory" {
			errs = append(errs, fmt.Errorf("store: %q with environment kubernetes: the zone's store is the cluster's API; leave store unset", c.Store))
		}
		if ns := c.Kubernetes.SystemNamespace; ns != "" {
			if err := tokens.CheckZoneName(ns); err != nil { // the same rule: a DNS-1123 label
				errs = append(errs, fmt.Errorf("kubernetes.systemNamespace: %w", err))
			}
		}
	default:
		errs = append(errs, fmt.Errorf("environment: %q is neither %s nor %s", c.Environment, EnvironmentUniversal, EnvironmentKubernetes))
	}
	return errs
}

// kubeEnv is the cluster a zone on Kubernetes runs in.
type kubeEnv struct {
	client *kube.Client
	// namespace holds the control plane's objects: its store's namespaced
	// resources and its leases.
	namespace string
}

// openBackend opens the zone's store: cfg.Store on universal; on
// Kubernetes, the cluster's API, after checking that the namespace exists and
// the CRDs are installed, returned with the cluster.
func openBackend(ctx context.Context, cfg Config, log *zap.Logger) (*backend.Backend, *kubeEnv, error) {
	if !cfg.OnKubernetes() {
		be, err := backend.Open(ctx, cfg.Store, log)
		if err != nil {
			return nil, nil, fmt.Errorf("open store: %w", err)
		}
		return be, nil, nil
	}
	env, err := connectCluster(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	st, err := kubestore.New(kubestore.Options{Client: env.client, Namespace: env.namespace, Logger: log.Named("store")})
	if err != nil {
		return nil, nil, err
	}
	be := &backend.Backend{Store: withLeases{Store: st, client: env.client, ns: env.namespace}, Ping: apiServerPing(env.client), Close: func() {}, Kind: "kubernetes"}
	log.Info("zone on kubernetes", zap.String("namespace", env.namespace), zap.Bool("in_cluster", cfg.Kubeconfig == ""))
	return be, env, nil
}

// apiServerPing is the zone's readiness on Kubernetes: the API server is
// ready (its /readyz, which every client may read).
func apiServerPing(c *kube.Client) func(context.Context) error {
	return func(ctx context.Context) error {
		if err := c.Do(ctx, "GET", "/readyz", nil, nil); err != nil {
			return fmt.Errorf("kubernetes API server: %w", err)
		}
		return nil
	}
}

// connectCluster reads the cluster's configuration (the kubeconfig, else the
// pod's service account) and checks what the zone needs of the cluster.
func connectCluster(ctx context.Context, cfg Config) (*kubeEnv, error) {
	var kc *kube.Config
	var err error
	if cfg.Kubeconfig != "" {
		kc, err = kube.LoadKubeconfig(cfg.Kubeconfig)
	} else {
		kc, err = kube.InCluster()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes: %w", err)
	}
	ns := cfg.Kubernetes.SystemNamespace
	if ns == "" && cfg.Kubeconfig == "" {
		ns = kc.Namespace // the pod's own
	}
	if ns == "" {
		ns = DefaultSystemNamespace
	}
	client, err := kube.New(kc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := checkCluster(ctx, client, ns); err != nil {
		return nil, err
	}
	return &kubeEnv{client: client, namespace: ns}, nil
}

// checkCluster fails, saying what to do, when the system namespace is
// missing or the ursa.io CRDs are not (all) installed.
func checkCluster(ctx context.Context, c *kube.Client, ns string) error {
	switch err := c.Do(ctx, "GET", "/api/v1/namespaces/"+ns, nil, nil); {
	case kube.IsNotFound(err):
		return fmt.Errorf("kubernetes.systemNamespace: namespace %q does not exist (kubectl create namespace %s, or install the Helm chart deploy/helm/ursa)", ns, ns)
	case err != nil:
		return fmt.Errorf("kubernetes: read namespace %s: %w", ns, err)
	}
	var list struct {
		Resources []struct {
			Name string `json:"name"`
		} `json:"resources"`
	}
	err := c.Do(ctx, "GET", "/apis/"+crd.APIVersion, nil, &list)
	if err != nil && !kube.IsNotFound(err) {
		return fmt.Errorf("kubernetes: read the %s API: %w", crd.APIVersion, err)
	}
	var have, missing []string
	for _, r := range list.Resources {
		have = append(have, r.Name)
	}
	for _, d := range api.Types() {
		if p, ok := crd.PlacementOf(d.Type); ok && p.Kind == crd.CustomResource && !slices.Contains(have, crd.NamesOf(d).Plural) {
			missing = append(missing, crd.NamesOf(d).Plural+"."+crd.Group)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("kubernetes: the %s CRDs are not installed (missing %v): kubectl apply -f deploy/crds, or install the Helm chart deploy/helm/ursa", crd.Group, missing)
	}
	return nil
}

// election is how a zone's replicas elect the one that does the jobs only
// one may do (allocating VIPs, talking to the global, reaping presence,
// the pod controller, ...): one lease for all of them, LeaderLease, held in
// the store on universal, as a coordination.k8s.io Lease of the system
// namespace on Kubernetes. One lease, not one per job as before: the jobs
// ended up on one replica anyway (the first to start took every lease), and
// each lease costs a write per renewal, a second's worth of etcd writes per
// job on Kubernetes.
type election struct {
	leases   leader.Leases
	instance string
	duration time.Duration
	jobs     []leaderJob
	// onLead, when set, is told as this replica starts and stops leading.
	onLead func(bool)
}

type leaderJob struct {
	name string
	fn   func(context.Context) error
}

// LeaderLease names the lease of a zone's leader.
const LeaderLease = "zone-leader"

func newElection(st store.Store, k8s *kubeEnv, instance string) *election {
	if k8s != nil {
		return &election{leases: leader.KubeLeases{Client: k8s.client, Namespace: k8s.namespace}, instance: instance, duration: kubeLeaseDuration}
	}
	return &election{leases: leader.StoreLeases{Store: st}, instance: instance, duration: storeLeaseDuration}
}

// leaderOnly adds a job that runs while this replica leads; add the
// election's component to the runner once every job is in.
func (el *election) leaderOnly(name string, fn func(context.Context) error) {
	el.jobs = append(el.jobs, leaderJob{name: name, fn: fn})
}

// component competes for LeaderLease and, while it is held, runs every job,
// each restarted on its own after a failure (a second later).
func (el *election) component(log *zap.Logger) (string, run.Component) {
	e := &leader.Elector{Leases: el.leases, Lease: LeaderLease, Identity: el.instance, Duration: el.duration, Log: log.Named("leader")}
	jobs := slices.Clone(el.jobs)
	names := make([]string, len(jobs))
	for i, j := range jobs {
		names[i] = j.name
	}
	return "leader only: " + strings.Join(names, ", "), run.Func(func(ctx context.Context) error {
		return e.Start(ctx, func(ctx context.Context) error {
			if el.onLead != nil {
				el.onLead(true)
				defer el.onLead(false)
			}
			var wg sync.WaitGroup
			for _, j := range jobs {
				wg.Go(func() {
					for ctx.Err() == nil {
						if err := j.fn(ctx); err != nil && ctx.Err() == nil {
							log.Warn("leader-only job failed; restarting it", zap.String("job", j.name), zap.Error(err))
						}
						// Also after a nil return: a job that ends early
						// must not spin.
						select {
						case <-ctx.Done():
						case <-time.After(time.Second):
						}
					}
				})
			}
			wg.Wait()
			return nil
		})
	})
}

// addKubernetes adds what a zone on Kubernetes runs besides a universal
// zone's components: the controller that turns pods into Dataplanes and
// ingress pods into ZoneIngresses (leader only).
func addKubernetes(cfg Config, st store.Store, el *election, k8s *kubeEnv, log *zap.Logger) {
	ctl := &k8szone.Controller{Client: k8s.client, Store: st, Zone: cfg.Zone, SystemNamespace: k8s.namespace, Log: log.Named("pods")}
	el.leaderOnly("pod-controller", ctl.Run)
}
