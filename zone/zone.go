// Package zone wires a zone control plane: its store, its REST API and, when
// federated, the KDS client that keeps it in sync with the global.
package zone

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/ursamesh/ursa/dns"
	"github.com/ursamesh/ursa/kds"
	"github.com/ursamesh/ursa/kds/client"
	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/apiserver"
	"github.com/ursamesh/ursa/pkg/catalog"
	"github.com/ursamesh/ursa/pkg/config"
	"github.com/ursamesh/ursa/pkg/gctune"
	"github.com/ursamesh/ursa/pkg/mtls"
	"github.com/ursamesh/ursa/pkg/run"
	"github.com/ursamesh/ursa/pkg/servingcert"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/store/backend"
	"github.com/ursamesh/ursa/pkg/tokens"
	"github.com/ursamesh/ursa/pkg/xds"
)

// Version is reported to the global in the zone's insight.
const Version = "0.1.0"

// Config is the zone CP's configuration; see pkg/config for how it maps to a
// YAML file, URSA_* variables and flags.
type Config struct {
	Zone          string `json:"zone" usage:"name of this zone (a DNS-1123 label)"`
	ZoneTokenFile string `json:"zoneTokenFile" usage:"file holding this zone's token (ursactl generate zone-token --zone NAME)"`
	Global        struct {
		KDS struct {
			Address            string `json:"address" usage:"the global CP's KDS address, grpcs://HOST:5685; empty runs the zone standalone"`
			CAFile             string `json:"caFile" usage:"PEM file of the CA (or self-signed certificate) the global's KDS certificate must chain to"`
			InsecureSkipVerify bool   `json:"insecureSkipVerify" usage:"INSECURE: do not verify the global's KDS certificate: whoever is on the path gets the zone token, and with it the zone's CA key; tests only"`
		} `json:"kds"`
	} `json:"global"`
	Store string `json:"store" usage:"where resources are kept: memory, or a postgres:// URL (with --environment kubernetes: the cluster's API; leave it unset)"`
	// Environment is where the zone runs: on hosts it is told of
	// (universal) or in a Kubernetes cluster, whose API is then its store;
	// see k8s.go.
	Environment string `json:"environment" usage:"where the zone runs: universal (VMs and hosts) or kubernetes (the cluster's API is the store, pods become Dataplanes)"`
	Kubeconfig  string `json:"kubeconfig" usage:"kubeconfig file of the cluster, with --environment kubernetes (empty: the pod's service account, in a cluster)"`
	Kubernetes  struct {
		SystemNamespace string `json:"systemNamespace" usage:"namespace of the control plane's objects, with --environment kubernetes (default: the pod's own namespace in a cluster, else ursa-system)"`
		// Injection is the sidecar injector's (k8s_webhooks.go).
		Injection InjectionConfig `json:"injection"`
	} `json:"kubernetes"`
	API apiserver.Config `json:"api"`
	XDS struct {
		Addr                 string `json:"addr" usage:"address of the xDS gRPC server proxies connect to"`
		AllowUnauthenticated bool   `json:"allowUnauthenticated" usage:"INSECURE: admit proxies without a dataplane token; local experiments only"`
		// AllowLoopbackDataplanes admits proxies that present a loopback
		// (or link-local, or unspecified) address: sidecars and the
		// ingress connect to a Dataplane's address, so without this rule
		// any token holder could point them at services that listen only
		// on a host's loopback.
		AllowLoopbackDataplanes bool `json:"allowLoopbackDataplanes" usage:"INSECURE: admit proxies whose Dataplane or ZoneIngress has a loopback, link-local or unspecified address, which lets any token holder point sidecars and the ingress at services listening on a host's loopback; single-host demos and tests only"`
		// OfflineRemoval removes the Dataplane of a proxy that has been
		// disconnected this long; 0 keeps it.
		OfflineRemoval config.Duration `json:"offlineRemoval" usage:"remove the Dataplane of a proxy disconnected this long (0 keeps it)"`
		// LoadReportingInterval is how often proxies report their
		// traffic (LRS), which the zone sums up in ServiceInsights.
		LoadReportingInterval config.Duration `json:"loadReportingInterval" usage:"how often proxies report where their traffic goes (LRS)"`
		// The server's TLS: by default a leaf for this host's names, signed
		// by the zone's CA (kept in the store, served at /xds/ca.pem).
		TLSCert  string   `json:"tlsCert" usage:"xDS TLS certificate file (PEM); when none is given, one is made for this host, signed by a CA kept in the store (GET /xds/ca.pem)"`
		TLSKey   string   `json:"tlsKey" usage:"xDS TLS private key file (PEM)"`
		TLSSAN   []string `json:"tlsSan" usage:"a further DNS name or IP address proxies reach the xDS server by, for its self-signed certificate (repeatable)"`
		Insecure bool     `json:"insecure" usage:"INSECURE: serve xDS without TLS; local experiments only"`
	} `json:"xds"`
	MTLS struct {
		CertTTL config.Duration `json:"certTTL" usage:"lifetime of workload certificates; each is renewed at a time drawn between 40 % and half of it, so that proxies that connected together do not all renew at once"`
		// CAPublishDelay matters in a standalone zone only, which makes
		// its meshes' CAs.
		CAPublishDelay config.Duration `json:"caPublishDelay" usage:"TESTS ONLY: how long a new CA (a zone's next intermediate, a mesh's next root) is published before it is relied on, and an old root stays after every zone issues under its successor; 0 is the default, an hour, which production needs for every proxy to receive each step (standalone zones only)"`
	} `json:"mtls"`
	DNS struct {
		Addr      string          `json:"addr" usage:"address of the .mesh DNS resolver (UDP and TCP)"`
		Domain    string          `json:"domain" usage:"the domain answered for: <service>.<domain> and <service>.<mesh>.<domain>"`
		TTL       config.Duration `json:"ttl" usage:"TTL of DNS answers"`
		Upstreams []string        `json:"upstreams" usage:"resolvers (host:port, comma-separated) for names outside the domain; none refuses them"`
	} `json:"dns"`
	VIP struct {
		CIDR     string          `json:"cidr" usage:"range virtual IPs are allocated from"`
		HoldBack config.Duration `json:"holdBack" usage:"how long a released VIP stays reserved before another service may get it (longer than the DNS TTL)"`
	} `json:"vip"`
	// Webhook is a Kubernetes zone's admission webhooks (k8s_webhooks.go).
	Webhook WebhookConfig `json:"webhook"`
	// Instance names this replica, for leader election.
	Instance string `json:"instance" usage:"name of this zone CP replica (default: host name and process id)"`
	KDS      struct {
		MaxMessageSize int64           `json:"maxMessageSize" usage:"largest KDS message, in bytes"`
		AckTimeout     config.Duration `json:"ackTimeout" usage:"how long the global may leave a change unacknowledged before the stream is restarted"`
	} `json:"kds"`
	Log struct {
		Level string `json:"level" usage:"log level: debug, info, warn or error"`
	} `json:"log"`
	ShutdownGrace config.Duration `json:"shutdownGrace" usage:"how long in-flight requests may take to finish on shutdown"`
	// GCPercent is the garbage collection target, as GOGC; see
	// DefaultGCPercent.
	GCPercent int `json:"gcPercent" usage:"garbage collection target as GOGC: the heap may grow this many percent over the live heap between collections (0: Go's default, 100; the GOGC variable wins)"`
}

// DefaultConfig returns the defaults of DESIGN.md §5.
func DefaultConfig() Config {
	var c Config
	c.Store = "memory"
	c.Environment = EnvironmentUniversal
	c.API = apiserver.DefaultConfig()
	c.XDS.Addr = ":5678"
	c.XDS.OfflineRemoval = config.Duration{Duration: 72 * time.Hour}
	c.XDS.LoadReportingInterval = config.Duration{Duration: xds.DefaultLoadReportingInterval}
	c.MTLS.CertTTL = config.Duration{Duration: 24 * time.Hour}
	c.DNS.Addr, c.DNS.Domain, c.DNS.TTL = ":5653", "mesh", config.Duration{Duration: 30 * time.Second}
	c.VIP.CIDR, c.VIP.HoldBack = "240.0.0.0/4", config.Duration{Duration: 10 * time.Minute}
	c.KDS.MaxMessageSize = 16 << 20
	c.KDS.AckTimeout = config.Duration{Duration: 15 * time.Second}
	c.Log.Level = "info"
	c.ShutdownGrace = config.Duration{Duration: 10 * time.Second}
	c.GCPercent = DefaultGCPercent
	c.Webhook, c.Kubernetes.Injection = DefaultWebhookConfig(), DefaultInjectionConfig()
	return c
}

// Federated reports whether the zone syncs with a global CP.
func (c Config) Federated() bool { return c.Global.KDS.Address != "" }

// Validate reports every setting that cannot work, naming its key.
func (c Config) Validate() error {
	var errs []error
	if err := tokens.CheckZoneName(c.Zone); err != nil {
		errs = append(errs, fmt.Errorf("zone: %w", err))
	}
	if c.Store != "memory" && !backend.IsPostgres(c.Store) {
		errs = append(errs, fmt.Errorf("store: %q is neither memory nor a postgres:// URL", c.Store))
	}
	errs = append(errs, c.validateEnvironment()...)
	errs = append(errs, c.validateKubeWebhooks()...)
	if err := c.API.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.Federated() {
		if _, err := client.ParseAddress(c.Global.KDS.Address); err != nil {
			errs = append(errs, fmt.Errorf("global.kds.address: %w", err))
		}
		if c.ZoneTokenFile == "" {
			errs = append(errs, errors.New("zoneTokenFile: required with global.kds.address (ursactl generate zone-token --zone NAME)"))
		}
		if c.Global.KDS.CAFile == "" && !c.Global.KDS.InsecureSkipVerify {
			errs = append(errs, errors.New("global.kds.caFile: required to verify the global (or set global.kds.insecureSkipVerify)"))
		}
	}
	if d := c.XDS.OfflineRemoval.Duration; d != 0 && d < time.Second {
		errs = append(errs, fmt.Errorf("xds.offlineRemoval: %s is too short; use 0 (keep) or at least 1s", c.XDS.OfflineRemoval))
	}
	if c.MTLS.CertTTL.Duration < time.Minute {
		errs = append(errs, errors.New("mtls.certTTL: use at least 1m"))
	}
	if c.MTLS.CAPublishDelay.Duration < 0 {
		errs = append(errs, errors.New("mtls.caPublishDelay: must not be negative (0 is the default, an hour)"))
	}
	if c.MTLS.CAPublishDelay.Duration != 0 && c.Federated() {
		errs = append(errs, errors.New("mtls.caPublishDelay: a federated zone's CAs are made by its global; set it there"))
	}
	if d := c.XDS.LoadReportingInterval.Duration; d < 100*time.Millisecond || d > time.Minute {
		errs = append(errs, fmt.Errorf("xds.loadReportingInterval: %s is out of range; use 100ms to 1m", c.XDS.LoadReportingInterval))
	}
	if _, _, err := net.SplitHostPort(c.XDS.Addr); err != nil {
		errs = append(errs, fmt.Errorf("xds.addr: %q is not host:port", c.XDS.Addr))
	}
	errs = append(errs, c.validateXDSTLS()...)
	if _, _, err := net.SplitHostPort(c.DNS.Addr); err != nil {
		errs = append(errs, fmt.Errorf("dns.addr: %q is not host:port", c.DNS.Addr))
	}
	if d := strings.Trim(c.DNS.Domain, "."); d == "" || strings.ContainsAny(d, " /") {
		errs = append(errs, fmt.Errorf("dns.domain: %q is not a domain name", c.DNS.Domain))
	}
	if c.DNS.TTL.Duration < time.Second {
		errs = append(errs, errors.New("dns.ttl: use at least 1s"))
	}
	for _, u := range c.DNS.Upstreams {
		if _, _, err := net.SplitHostPort(u); err != nil {
			errs = append(errs, fmt.Errorf("dns.upstreams: %q is not host:port", u))
		}
	}
	if p, err := netip.ParsePrefix(c.VIP.CIDR); err != nil {
		errs = append(errs, fmt.Errorf("vip.cidr: %q is not a CIDR such as 240.0.0.0/4", c.VIP.CIDR))
	} else if (p.Addr().Is4() && p.Bits() > 30) || (p.Addr().Is6() && p.Bits() > 126) {
		errs = append(errs, fmt.Errorf("vip.cidr: %s is too small", c.VIP.CIDR))
	}
	if c.VIP.HoldBack.Duration <= c.DNS.TTL.Duration {
		errs = append(errs, fmt.Errorf("vip.holdBack: %s must exceed dns.ttl (%s), or cached answers could reach a VIP's next service", c.VIP.HoldBack, c.DNS.TTL))
	}
	if c.GCPercent != 0 && (c.GCPercent < 10 || c.GCPercent > 10000) {
		errs = append(errs, fmt.Errorf("gcPercent: %d is out of range; use 0 (Go's default) or 10 to 10000", c.GCPercent))
	}
	if c.KDS.MaxMessageSize < 2*api.MaxDocumentSize {
		errs = append(errs, fmt.Errorf("kds.maxMessageSize: use at least %d", 2*api.MaxDocumentSize))
	}
	return errors.Join(errs...)
}

// Run runs a zone CP until ctx ends.
func Run(ctx context.Context, cfg Config, log *zap.Logger) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	log = log.With(zap.String("zone", cfg.Zone))
	if cfg.Instance == "" {
		host, _ := os.Hostname()
		cfg.Instance = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	gctune.Fixed(cfg.GCPercent, log)
	var kdsDeps *client.Deps
	if cfg.Federated() {
		if cfg.Global.KDS.InsecureSkipVerify {
			log.Warn("INSECURE: the global's KDS certificate is not verified (global.kds.insecureSkipVerify); whoever is on the path gets the zone token and the zone's CA key")
		}
		d, err := kdsClientDeps(cfg)
		if err != nil {
			return err
		}
		kdsDeps = d
	}
	be, k8s, err := openBackend(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer be.Close()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	st, err := store.WithMetrics(be.Store, reg)
	if err != nil {
		return err
	}
	mode := apiserver.ModeStandalone
	if cfg.Federated() {
		mode = apiserver.ModeZone
	}
	xdsServer, err := xds.NewServer(log.Named("xds"), reg)
	if err != nil {
		return err
	}
	zm, err := newZoneMetrics(reg)
	if err != nil {
		return err
	}
	mirror := store.NewMirror(st, mirroredTypes(), log.Named("mirror"))
	cat := catalog.NewFollower(cfg.Zone, mirror, log.Named("catalog"))
	pres := NewPresence(st, mirror, cfg.Instance, log.Named("presence"))
	dpTokens, ingTokens := tokens.NewDataplaneIssuer(st), tokens.NewIngressIssuer(st, cfg.Zone)
	// Tokens revoked through this replica end their streams here at once;
	// every replica's sweep ("revoked-tokens", every revokedSweepEvery)
	// ends the others'.
	reverify := func() {
		go func() {
			rctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			xdsServer.Reverify(rctx)
		}()
	}
	dpTokens.Revoked, ingTokens.Revoked = reverify, reverify
	if k8s != nil {
		dpTokens.Foreign = foreignProxyToken
	}
	xdsServer.SetAuth(withKubeTokens(proxyAuth(cfg.Zone, dpTokens, ingTokens, mirror, cfg.XDS.AllowUnauthenticated), cfg.Zone, k8s, mirror))
	if cfg.XDS.AllowUnauthenticated {
		log.Warn("INSECURE: proxies without a token are admitted (--xds-allow-unauthenticated): anyone who reaches the xDS port may claim any Dataplane and get its identity")
	}
	if cfg.XDS.AllowLoopbackDataplanes {
		log.Warn("INSECURE: proxies may register loopback addresses (--xds-allow-loopback-dataplanes): a token holder can point sidecars and the ingress at this host's loopback services")
	}
	xdsServer.SetRegistrar(registrar{st: st, zone: cfg.Zone, instance: cfg.Instance, presence: pres, allowLoopback: cfg.XDS.AllowLoopbackDataplanes})
	xdsServer.SetPresence(pres)
	xdsCert, err := xdsCertificate(ctx, withKubeXDSNames(cfg, k8s), st, log)
	if err != nil {
		return err
	}
	extra := dpTokens.Handlers()
	maps.Copy(extra, ingTokens.Handlers())
	extra["GET /meshes/{mesh}/dataplanes/{name}/insight"] = dataplaneInsight(st)
	extra["GET /xds/ca.pem"] = xdsCAHandler(xdsCert)
	caTiming := mtls.Timing{Published: cfg.MTLS.CAPublishDelay.Duration}
	if !cfg.Federated() {
		if caTiming.Published > 0 {
			log.Warn("TESTS ONLY: CAs are relied on after a shortened publishing time (--mtls-ca-publish-delay); proxies that miss a step may refuse peers", zap.Duration("ca_publish_delay", caTiming.Published))
		}
		maps.Copy(extra, mtls.Handlers(st, caTiming, nil, log.Named("mesh-ca")))
	}
	// A federated zone verifies the user tokens its global signs; a
	// standalone one is its own global.
	users := tokens.NewUserIssuer(st, log.Named("user-tokens"))
	if cfg.Federated() {
		users = tokens.NewUserVerifier(st, cfg.Global.KDS.Address, log.Named("user-tokens"))
	}
	maps.Copy(extra, users.Handlers())
	apiCert, err := apiserver.Certificate(ctx, st, cfg.API, "ursa zone control plane (API) CA, zone "+cfg.Zone)
	if err != nil {
		return err
	}
	extra["GET /api/ca.pem"] = apiCert.CAHandler()
	apiLns, err := apiserver.Listen(cfg.API)
	if err != nil {
		return err
	}
	handler, err := apiserver.New(apiserver.Deps{
		Store: st, Log: log.Named("api"), Mode: mode, Ready: be.Ping, Registry: reg, Zone: cfg.Zone,
		BodyLimit: cfg.API.BodyLimit, RequireTokenOnLocalhost: cfg.API.RequireTokenOnLocalhost,
		Users: users, Extra: extra, AllowRemoteHTTP: cfg.API.AllowRemoteHTTP, TLSAddr: apiLns.TLS.Addr().String(),
	})
	if err != nil {
		apiLns.Close()
		return err
	}
	r := run.New(log)
	el := newElection(st, k8s, cfg.Instance)
	el.onLead = zm.leading
	apiserver.Serve(r, apiLns, handler, apiCert, cfg.ShutdownGrace.Duration, log.Named("api"))
	r.AddRestarting("mirror", mirror)
	r.Add("catalog", cat)
	r.Add("presence", pres)
	reap := newReaper(st, mirror, time.Now, cfg.Instance, log.Named("presence"))
	r.Add("heartbeat-watch", run.Func(reap.watch))
	r.Add("revoked-tokens", run.Func(func(ctx context.Context) error {
		return run.Every(ctx, revokedSweepEvery, func(ctx context.Context) error { xdsServer.Reverify(ctx); return nil })
	}))
	el.leaderOnly("presence-reaper", reap.lead)
	r.AddRestarting("expire", run.Func(newExpirer(st, mirror, log.Named("expire")).Run))
	if !cfg.Federated() {
		// A standalone zone is its own global: it makes its meshes' CAs.
		r.AddRestarting("mesh-ca", &mtls.Authority{Store: st, Source: mirror, Zones: mtls.OnlyZone(cfg.Zone), Timing: caTiming, Log: log.Named("mesh-ca")})
	}
	if err := addDNS(r, cfg, st, el, cat, reg, log); err != nil {
		apiLns.Close()
		return err
	}
	loads := xds.NewLoads(2 * time.Second)
	lrsServer, err := xds.NewLoadReporting(xdsServer, loads, cfg.XDS.LoadReportingInterval.Duration, log.Named("lrs"), reg)
	if err != nil {
		apiLns.Close()
		return err
	}
	// One writer per zone, or replicas would overwrite each other's
	// insights every second; the leader's covers the proxies connected to
	// it.
	el.leaderOnly("service-insights", func(ctx context.Context) error {
		return writeServiceInsights(ctx, st, mirror, loads, cfg.Zone, time.Second, log.Named("service-insights"))
	})
	if err := addXDS(ctx, r, cfg, st, el, mirror, cat, xdsServer, lrsServer, xdsCert, zm, log); err != nil {
		apiLns.Close()
		return err
	}
	if k8s != nil {
		addKubernetes(cfg, st, el, k8s, log)
		if err := addKubeWebhooks(ctx, r, cfg, st, k8s, xdsCert, log); err != nil {
			apiLns.Close()
			return err
		}
	}
	if kdsDeps != nil {
		cache := kds.NewCacheOf(mirror, kds.ZoneToGlobalTypes(), ownedHere, log.Named("kds-cache"))
		cache.SetTransform(api.SummaryOf, api.SameSummary)
		kdsMetrics, err := kds.NewMetrics(reg)
		if err != nil {
			return err
		}
		kdsDeps.Store, kdsDeps.Cache, kdsDeps.Log, kdsDeps.Metrics = st, cache, log.Named("kds"), kdsMetrics
		c, err := client.New(*kdsDeps)
		if err != nil {
			return err
		}
		if err := reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ursa_kds_global_connected",
			Help: "1 while this replica's KDS streams to the global are up (only the zone's leader opens them), else 0.",
		}, func() float64 {
			if c.Connected() {
				return 1
			}
			return 0
		})); err != nil {
			return err
		}
		r.AddRestarting("kds-cache", cache)
		// One replica of a zone talks to the global: they share a store,
		// so what one receives every replica reads, and what it sends is
		// every replica's.
		el.leaderOnly("kds", c.Start)
	}
	r.Add(el.component(log))
	log.Info("zone control plane starting", zap.String("store", be.Kind), zap.Bool("federated", cfg.Federated()),
		zap.String("global", cfg.Global.KDS.Address), zap.String("api_addr", apiLns.Plain.Addr().String()),
		zap.String("api_tls_addr", apiLns.TLS.Addr().String()), zap.Strings("api_tls_names", apiCert.Names().Strings()))
	return r.Run(ctx)
}

// ownedHere picks what the zone sends up: what it made, not what it got.
func ownedHere(r api.Resource) bool {
	return r.GetMeta().Labels[api.LabelOrigin] != api.OriginGlobal
}

// kdsClientDeps reads the token and the TLS settings, refusing a token issued
// to another zone before anything connects.
func kdsClientDeps(cfg Config) (*client.Deps, error) {
	addr, err := client.ParseAddress(cfg.Global.KDS.Address)
	if err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(cfg.ZoneTokenFile)
	if err != nil {
		return nil, fmt.Errorf("zone token: %w", err)
	}
	token := strings.TrimSpace(string(raw))
	if claimed, err := tokens.UnverifiedZone(token); err != nil {
		return nil, fmt.Errorf("zone token %s: %w", cfg.ZoneTokenFile, err)
	} else if claimed != cfg.Zone {
		return nil, fmt.Errorf("this control plane runs as zone %q but its token (%s) was issued to zone %q", cfg.Zone, cfg.ZoneTokenFile, claimed)
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: cfg.Global.KDS.InsecureSkipVerify}
	if cfg.Global.KDS.CAFile != "" {
		pem, err := os.ReadFile(cfg.Global.KDS.CAFile)
		if err != nil {
			return nil, fmt.Errorf("global.kds.caFile: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("global.kds.caFile %s: no PEM certificate in it", cfg.Global.KDS.CAFile)
		}
		tlsCfg.RootCAs = pool
	}
	return &client.Deps{
		Zone: cfg.Zone, Address: addr, Token: token, TLS: tlsCfg, Version: Version,
		MaxMessageSize: int(cfg.KDS.MaxMessageSize), AckTimeout: cfg.KDS.AckTimeout.Duration,
	}, nil
}

// addDNS adds the resolver, its table and the leader-only VIP allocator.
func addDNS(r *run.Runner, cfg Config, st store.Store, el *election, cat *catalog.Follower, reg prometheus.Registerer, log *zap.Logger) error {
	metrics, err := dns.NewMetrics(reg)
	if err != nil {
		return err
	}
	udp, tcp, err := listenDNS(cfg.DNS.Addr)
	if err != nil {
		return fmt.Errorf("dns: %w", err)
	}
	resolver := dns.NewResolver()
	server := &dns.Server{Resolver: resolver, Domain: cfg.DNS.Domain, TTL: cfg.DNS.TTL.Duration,
		Upstreams: cfg.DNS.Upstreams, Log: log.Named("dns"), Metrics: metrics}
	alloc := dns.Allocator{CIDR: netip.MustParsePrefix(cfg.VIP.CIDR), HoldBack: cfg.VIP.HoldBack.Duration}
	r.Add("dns-table", run.Func(func(ctx context.Context) error { return resolver.Follow(ctx, cat) }))
	el.leaderOnly("vip-allocator", func(ctx context.Context) error {
		return dns.Allocate(ctx, st, cat, alloc, log.Named("vip"))
	})
	r.Add("dns", run.Func(func(ctx context.Context) error { return server.Start(ctx, udp, tcp) }))
	log.Info("resolver listening", zap.String("dns_addr", tcp.Addr().String()), zap.String("domain", cfg.DNS.Domain), zap.String("vip_cidr", cfg.VIP.CIDR))
	return nil
}

// listenDNS binds addr over UDP and TCP on one port: with port 0, the port
// the UDP socket got, trying again if its TCP twin is taken.
func listenDNS(addr string) (net.PacketConn, net.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, err
	}
	for range 10 {
		udp, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, nil, err
		}
		bound := net.JoinHostPort(host, strconv.Itoa(udp.LocalAddr().(*net.UDPAddr).Port))
		tcp, err := net.Listen("tcp", bound)
		if err == nil {
			return udp, tcp, nil
		}
		udp.Close()
		if port != "0" {
			return nil, nil, err
		}
	}
	return nil, nil, fmt.Errorf("no port free over both UDP and TCP on %s", host)
}

// addXDS adds the xDS server and the generation of proxies' configurations;
// the server speaks TLS with cert, plaintext when it is nil.
func addXDS(ctx context.Context, r *run.Runner, cfg Config, st store.Store, el *election, mirror *store.Mirror, cat *catalog.Follower, srv *xds.Server, loadReports *xds.LoadReporting, cert *servingcert.Serving, zm *zoneMetrics, log *zap.Logger) error {
	ln, err := net.Listen("tcp", cfg.XDS.Addr)
	if err != nil {
		return fmt.Errorf("xds: %w", err)
	}
	opts := append(xds.GRPCServerOptions(), grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}))
	if cert != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(cert.TLSConfig())))
	}
	g := grpc.NewServer(opts...)
	srv.Register(ctx, g)
	loadReports.Register(g)
	r.Add("xds", run.GRPCServer(g, ln, cfg.ShutdownGrace.Duration))
	if d := cfg.XDS.OfflineRemoval.Duration; d > 0 {
		el.leaderOnly("dataplane-cleanup", func(ctx context.Context) error {
			return removeOffline(ctx, st, mirror, d, log.Named("xds"))
		})
	}
	// Every replica reads the same catalogue, so their offers agree; one
	// writes them.
	el.leaderOnly("ingress-services", func(ctx context.Context) error {
		return offerServices(ctx, st, cat, log.Named("ingress"))
	})
	gen := NewGeneration(GenerationDeps{Catalog: cat, Nodes: srv, Out: srv, CertTTL: cfg.MTLS.CertTTL.Duration,
		DNSDomain: cfg.DNS.Domain, DNSTTL: cfg.DNS.TTL.Duration, Log: log.Named("xds"), OnSync: zm.synced})
	r.Add("xds-generate", gen)
	if cert != nil {
		log.Info("xDS server listening", zap.String("xds_addr", ln.Addr().String()), zap.Bool("tls", true), zap.Strings("xds_tls_names", cert.Names().Strings()))
	} else {
		log.Info("xDS server listening", zap.String("xds_addr", ln.Addr().String()), zap.Bool("tls", false))
	}
	return nil
}

// dataplaneInsight serves a Dataplane's insight (its proxy's presence) from
// the store.
func dataplaneInsight(st store.Store) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mesh, name := r.PathValue("mesh"), r.PathValue("name")
		if _, err := st.Get(r.Context(), api.Key{Type: "Dataplane", Mesh: mesh, Name: name}); err != nil {
			apiserver.WriteError(w, http.StatusNotFound, "Not found", fmt.Sprintf("dataplane %s/%s: %v", mesh, name, err))
			return
		}
		out := &api.DataplaneInsight{Meta: api.Meta{Type: "DataplaneInsight", Mesh: mesh, Name: name}}
		if in, err := st.Get(r.Context(), api.Key{Type: "DataplaneInsight", Mesh: mesh, Name: name}); err == nil {
			out = in.(*api.DataplaneInsight)
		} else if !errors.Is(err, store.ErrNotFound) {
			apiserver.WriteError(w, http.StatusServiceUnavailable, "Store unavailable", err.Error())
			return
		}
		apiserver.WriteJSON(w, http.StatusOK, out)
	})
}
