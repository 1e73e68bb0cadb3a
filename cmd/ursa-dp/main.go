// Command ursa-dp is Ursa's data plane: `ursa-dp run` is a sidecar that gets
// its configuration from the zone CP over xDS and applies it with the
// built-in L4 proxy.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/bootstrap"
	"github.com/ursamesh/ursa/pkg/config"
	"github.com/ursamesh/ursa/pkg/gctune"
	"github.com/ursamesh/ursa/pkg/logging"
	"github.com/ursamesh/ursa/pkg/proxy"
	"github.com/ursamesh/ursa/pkg/proxy/tproxy"
	"github.com/ursamesh/ursa/pkg/run"
)

// defaultDNSAddr is where a sidecar's resolver answers by default.
const defaultDNSAddr = "127.0.0.1:15053"

// defaultDrainTime is --drain-time's default: between Istio's 5 s and
// Kuma's 30 s, and within the 30 s a kubelet (terminationGracePeriodSeconds'
// default) and ursa-dp@.service (TimeoutStopSec) wait before SIGKILL, so
// that the proxy ends by itself and removes its redirection.
const defaultDrainTime = 20 * time.Second

// defaultGCHeapFloorMB is --gc-heap-floor-mb's default: a sidecar's live
// heap is a few MiB, and at Go's default it collected about twice a second
// under 17k requests/s (test/BENCHMARKS.md, "A heap floor for the
// sidecars").
const defaultGCHeapFloorMB = 32

// maxGCHeapFloorMB bounds --gc-heap-floor-mb (64 GiB): far past any
// proxy's memory, and far from overflowing its bytes.
const maxGCHeapFloorMB = 64 << 10

// proxyConfig is what every ursa-dp proxy, a sidecar (run) or an ingress,
// is configured with.
type proxyConfig struct {
	CPAddress   string `json:"cpAddress" usage:"the zone CP's xDS server, grpcs://HOST:5678 (TLS)"`
	CACertFile  string `json:"caCertFile" usage:"PEM file of the CA the zone CP's certificate must chain to (its GET /xds/ca.pem); without it, the system's roots"`
	CACert      string `json:"caCert" usage:"the PEM itself of the CA the zone CP's certificate must chain to, instead of --ca-cert-file (an injected sidecar gets it from the injector in URSA_CA_CERT)"`
	XDSInsecure bool   `json:"xdsInsecure" usage:"INSECURE: allow a grpc:// --cp-address, xDS without TLS, unverified and readable on the path; local experiments only"`
	TokenFile   string `json:"tokenFile" usage:"file holding this proxy's token: a dataplane token (ursactl generate dataplane-token), or an ingress token for ursa-dp ingress (ursactl generate ingress-token); read again at every reconnection"`
	Proxy       string `json:"proxy" usage:"builtin (the L4 proxy in this binary) or envoy"`
	AdminAddr   string `json:"adminAddr" usage:"address of /ready and /metrics"`
	// DrainTime bounds the drain that the first SIGTERM or SIGINT starts.
	DrainTime config.Duration `json:"drainTime" usage:"on SIGTERM or SIGINT (built-in proxy), how long the proxy drains before it exits: the listeners that take outside traffic (inbound, an ingress's) stop accepting and /ready answers 503, HTTP/1.1 responses say Connection: close and idle connections close, HTTP/2 connections get GOAWAY, requests and TCP connections in flight go on; outbound listeners keep accepting the application's calls (an HTTP connection then serves its request and closes). It exits once no connection is left, or when the drain time is over, closing what remains; a second signal exits at once. 0: no drain. The default fits in the 30 s a kubelet and ursa-dp@.service wait before SIGKILL"`
	// DrainExitWhenIdle ends the drain with the last connection.
	DrainExitWhenIdle bool `json:"drainExitWhenIdle" usage:"end the drain, and exit, as soon as no connection is open; false: stay for the whole --drain-time, serving the outbound calls an application makes during its own shutdown (a sidecar that gets SIGTERM together with its application, as a non-native sidecar in a pod does, like Istio's default)"`
	// GcHeapFloorMb is the heap growth, in MiB, the built-in proxy allows
	// itself between garbage collections.
	GcHeapFloorMb int `json:"gcHeapFloorMb" usage:"built-in proxy: let the heap grow by at least this many MiB between garbage collections (or double, when the live heap is larger), so that a proxy whose live heap is a few MiB does not collect for every few MiB its requests allocate; memory only under load. 0: Go's default (twice the live heap). A GOGC environment variable wins"`
	Log           struct {
		Level string `json:"level" usage:"log level: debug, info, warn or error"`
	} `json:"log"`
}

// defaultProxyConfig is a proxy's defaults, its admin address admin.
func defaultProxyConfig(admin string) proxyConfig {
	c := proxyConfig{CPAddress: "grpcs://127.0.0.1:5678", Proxy: "builtin", AdminAddr: admin, DrainTime: config.Duration{Duration: defaultDrainTime},
		DrainExitWhenIdle: true, GcHeapFloorMb: defaultGCHeapFloorMB}
	c.Log.Level = "info"
	return c
}

// ingressConfig is ursa-dp ingress's configuration.
type ingressConfig struct {
	proxyConfig
	ZoneIngressFile string `json:"zoneIngressFile" usage:"file of the ZoneIngress this ingress presents"`
	ZoneIngressName string `json:"zoneIngressName" usage:"name of an already registered ZoneIngress, instead of --zone-ingress-file: an ingress pod's, <pod>.<namespace>, which a Kubernetes zone makes"`
}

// runConfig is ursa-dp run's configuration (and cleanup's and
// install-transparent-proxy's, which take the same flags).
type runConfig struct {
	proxyConfig
	DataplaneFile        string `json:"dataplaneFile" usage:"file of the Dataplane this proxy presents and registers when it connects"`
	DataplaneName        string `json:"dataplaneName" usage:"name of an already registered Dataplane (with --mesh)"`
	Mesh                 string `json:"mesh" usage:"mesh of the Dataplane"`
	TransparentProxy     bool   `json:"transparentProxy" usage:"redirect the outbound TCP of this network namespace to the proxy (iptables, nat table; needs CAP_NET_ADMIN and the iptables package), installed before the proxy starts and removed when it exits"`
	RedirectOutboundPort int    `json:"redirectOutboundPort" usage:"with --transparent-proxy: the port outbound TCP is redirected to"`
	ExcludeOutboundPorts string `json:"excludeOutboundPorts" usage:"with --transparent-proxy: destination ports (22,8080) outbound TCP reaches directly"`
	RedirectInboundPort  int    `json:"redirectInboundPort" usage:"with --transparent-proxy and --dataplane-file: the port inbound TCP to the Dataplane's inbound ports (and their service ports, refused there) is redirected to (mTLS and TrafficPermissions apply there, and the app binds its port itself); 0: inbound TCP is not redirected"`
	ExcludeInboundPorts  string `json:"excludeInboundPorts" usage:"with --transparent-proxy: service ports (8080,9090) of the Dataplane whose TCP is not redirected (every inbound port, or none: an inbound's callers must reach the sidecar); with --redirect-all-inbound, any ports (22) inbound TCP reaches directly"`
	RedirectAllInbound   bool   `json:"redirectAllInbound" usage:"with --transparent-proxy: redirect inbound TCP to every port to --redirect-inbound-port, as Istio and Kuma do, but for --exclude-inbound-ports, SSH's (22) and the sidecar's own (its redirect ports, --admin-addr's): a port no inbound of the Dataplane takes is passed through to the app, from 127.0.0.6, and the Dataplane's inbound ports need not be known at start"`
	RedirectDNSPort      int    `json:"redirectDnsPort" usage:"with --transparent-proxy: the port UDP and TCP to port 53 of --resolv-conf's resolvers (any address when it names none) are redirected to; the sidecar's resolver then answers on 127.0.0.1:PORT (--dns-addr left at its default or set to that); 0: DNS is not redirected"`
	DNSAddr              string `json:"dnsAddr" usage:"IP:port on which the sidecar answers <service>.mesh names with their VIPs (over UDP and TCP), forwarding other names to --resolv-conf's resolvers; the zone CP sends the DNS listener for this address, and the proxy binds the address the CP sends; empty: no DNS (sidecars only)"`
	ResolvConf           string `json:"resolvConf" usage:"resolv.conf whose nameservers get the names outside .mesh, read at start (sidecars only)"`
	// The flags below serve a pod, where an init container
	// (install-transparent-proxy, root with NET_ADMIN) installs the
	// redirection and the sidecar runs as a user without privileges, and
	// ursa-dp@.service, whose ExecStartPre does the same as root.
	TransparentProxyInstalled bool   `json:"transparentProxyInstalled" usage:"with --transparent-proxy: the redirection was installed by ursa-dp install-transparent-proxy (a pod's init container, ursa-dp@.service's ExecStartPre) with the same redirect, --inbound-ports and --redirect-all-inbound flags; run neither installs nor removes it, and cannot mark its sockets: its own traffic must pass by its user (install-transparent-proxy --exclude-outbound-uids)"`
	InboundPorts              string `json:"inboundPorts" usage:"with --transparent-proxy and --dataplane-name: the Dataplane's inbound ports (8080,9090), whose inbound TCP is redirected to --redirect-inbound-port (with --dataplane-file they come from the file)"`
	AppProbes                 string `json:"appProbes" usage:"the app's probes (8080/ready,https:8443/healthz,tcp:9090,grpc:9000/SERVICE) that GET /probes/PROBE on --admin-addr makes of --app-probe-host, for a kubelet whose own probes of a redirected port would reach the inbound listener (an injected pod)"`
	AppProbeHost              string `json:"appProbeHost" usage:"the address --app-probes are made at, as the kubelet makes them at the pod's IP"`
	ExcludeOutboundUIDs       string `json:"excludeOutboundUids" usage:"with --transparent-proxy: users (5678, or names: ursa) whose outbound traffic is never redirected, such as a sidecar's that cannot mark its sockets"`
	SidecarUID                string `json:"sidecarUid" usage:"with install-transparent-proxy: the user (among --exclude-outbound-uids) of a sidecar that cannot mark its sockets (a pod's): its connections to this host's address at an inbound port go to its inbound listener, its probes of the app (from 127.0.0.6) to the app"`
	// inboundPorts are the inbound ports of the --dataplane-file's
	// Dataplane (none with --dataplane-name: not known at start), and
	// servicePorts the service ports that differ from theirs.
	inboundPorts, servicePorts []int
}

func main() {
	ctx := signalContext()
	root := &cobra.Command{Use: "ursa-dp", Short: "Ursa data plane", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(newRun(), newIngress(), newProxyless(), newCleanup(), newInstallTransparentProxy())
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}

func newRun() *cobra.Command {
	cfg := runConfig{proxyConfig: defaultProxyConfig("127.0.0.1:9901"),
		DNSAddr: defaultDNSAddr, ResolvConf: "/etc/resolv.conf", AppProbeHost: "127.0.0.1",
		RedirectOutboundPort: tproxy.DefaultOutboundPort, RedirectInboundPort: tproxy.DefaultInboundPort, RedirectDNSPort: tproxy.DefaultDNSPort}
	cfg.Log.Level = "info"
	var file string
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run a sidecar",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := config.Load(cmd.Flags(), &cfg, file); err != nil {
				return err
			}
			return runSidecar(cmd.Context(), cfg)
		},
	}
	cmd.Flags().StringVar(&file, "config", os.Getenv("URSA_CONFIG"), "YAML config file (env URSA_CONFIG)")
	config.Bind(cmd.Flags(), &cfg)
	return cmd
}

// newCleanup is ursa-dp cleanup, for a service manager to run after ursa-dp
// run exits however it exits (systemd's ExecStopPost): a killed or crashed
// ursa-dp leaves its redirection, which sends the host's outbound TCP and
// DNS to ports nobody answers on until the next start replaces it, and a
// next start may never come (a start limit, a unit stopped or disabled).
// It takes run's flags and variables, so that one environment serves both,
// and does nothing without --transparent-proxy, or while something listens
// on the rules' outbound port (a running ursa-dp, whose rules they are).
func newCleanup() *cobra.Command {
	cfg := runConfig{}
	cfg.Log.Level = "info"
	var file string
	cmd := &cobra.Command{
		Use:   "cleanup",
		Short: "Remove the transparent proxy's redirection that a killed ursa-dp run left in this network namespace",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := config.Load(cmd.Flags(), &cfg, file); err != nil {
				return err
			}
			if !cfg.TransparentProxy {
				return nil
			}
			log, err := logging.New(cfg.Log.Level)
			if err != nil {
				return err
			}
			defer log.Sync()
			// Another sidecar's rules stay (a host's second sidecar,
			// started with the transparent proxy by mistake, whose
			// install was refused), also when this one cannot tell its
			// own (its Dataplane file is not there).
			owner, err := redirectOwner(&cfg)
			if err != nil {
				log.Warn("cannot tell which sidecar this is: only rules that name none are removed", zap.Error(err))
				owner = tproxy.OwnerUnknown
			}
			if err := tproxy.RemoveLeftovers(cmd.Context(), log.Named("tproxy"), "", owner); err != nil {
				return fmt.Errorf("cleanup: %w", err)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&file, "config", os.Getenv("URSA_CONFIG"), "YAML config file (env URSA_CONFIG)")
	config.Bind(cmd.Flags(), &cfg)
	return cmd
}

func newIngress() *cobra.Command {
	cfg := ingressConfig{proxyConfig: defaultProxyConfig("127.0.0.1:9902")}
	var file string
	cmd := &cobra.Command{
		Use:   "ingress",
		Short: "Run a zone ingress: route other zones' mTLS connections by SNI, without decrypting",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := config.Load(cmd.Flags(), &cfg, file); err != nil {
				return err
			}
			id, meta, err := ingressNode(cfg)
			if err != nil {
				return err
			}
			// An ingress is reached at its own address: none of a
			// sidecar's redirection.
			return runProxy(cmd.Context(), runConfig{proxyConfig: cfg.proxyConfig}, id, meta)
		},
	}
	cmd.Flags().StringVar(&file, "config", os.Getenv("URSA_CONFIG"), "YAML config file (env URSA_CONFIG)")
	config.Bind(cmd.Flags(), &cfg)
	return cmd
}

func runSidecar(ctx context.Context, cfg runConfig) error {
	meta := map[string]string{}
	mesh, name := cfg.Mesh, cfg.DataplaneName
	r, doc, err := loadInbounds(&cfg)
	switch {
	case err != nil:
		return err
	case r != nil:
		mesh, name = r.GetMeta().Mesh, r.GetMeta().Name
		meta[api.MetadataDataplane] = string(doc)
	case name == "" || mesh == "":
		return errors.New("give --dataplane-file, or --dataplane-name with --mesh")
	}
	if cfg.DNSAddr != "" {
		if ap, err := netip.ParseAddrPort(cfg.DNSAddr); err != nil || ap.Port() == 0 {
			return fmt.Errorf("--dns-addr %q: want IP:port (empty: no DNS)", cfg.DNSAddr)
		}
		meta[api.MetadataDNSAddress] = cfg.DNSAddr
	}
	return runProxy(ctx, cfg, mesh+"."+name, meta)
}

// loadInbounds sets cfg's inbound and service ports, which the redirection
// of inbound TCP covers: those of --dataplane-file's Dataplane (returned,
// with the file's text), or --inbound-ports.
func loadInbounds(cfg *runConfig) (*api.Dataplane, []byte, error) {
	if cfg.DataplaneFile == "" {
		ports, err := tproxy.ParsePorts(cfg.InboundPorts)
		if err != nil {
			return nil, nil, fmt.Errorf("--inbound-ports: %w", err)
		}
		cfg.inboundPorts = ports
		return nil, nil, nil
	}
	if cfg.InboundPorts != "" {
		return nil, nil, errors.New("--inbound-ports: with --dataplane-name only; --dataplane-file's inbound ports are the file's")
	}
	r, doc, err := readDataplaneFile(cfg.DataplaneFile)
	if err != nil {
		return nil, nil, err
	}
	for _, in := range r.Networking.Inbound {
		// The app's own port too: an app that binds it on every
		// address is reached only through the sidecar (ursa:inbound
		// has no chain for it, and refuses what is sent there).
		cfg.inboundPorts = append(cfg.inboundPorts, in.Port)
		if in.AppPort() != in.Port {
			cfg.servicePorts = append(cfg.servicePorts, in.AppPort())
		}
	}
	return r, doc, nil
}

// redirectOwner returns the owner of the redirection the sidecar cfg runs
// installs: tproxy.OwnerOf its node id (mesh.name, of --dataplane-file's
// Dataplane or --mesh and --dataplane-name); "" when cfg names none. It
// sets cfg's inbound ports as loadInbounds does.
func redirectOwner(cfg *runConfig) (string, error) {
	r, _, err := loadInbounds(cfg)
	switch {
	case err != nil:
		return "", err
	case r != nil:
		return tproxy.OwnerOf(r.GetMeta().Mesh + "." + r.GetMeta().Name), nil
	case cfg.Mesh != "" && cfg.DataplaneName != "":
		return tproxy.OwnerOf(cfg.Mesh + "." + cfg.DataplaneName), nil
	}
	return "", nil
}

// dialSettings reads how the proxy reaches its zone CP: --cp-address, its
// CA (none for plaintext) and the token of --token-file ("" without one).
func dialSettings(cfg runConfig) (proxy.Target, *tls.Config, string, error) {
	target, err := proxy.ParseTarget(cfg.CPAddress, cfg.XDSInsecure)
	if err != nil {
		return proxy.Target{}, nil, "", fmt.Errorf("--cp-address %w", err)
	}
	if !target.TLS && (cfg.CACertFile != "" || cfg.CACert != "") {
		return proxy.Target{}, nil, "", fmt.Errorf("--ca-cert-file, --ca-cert: of no use with the plaintext --cp-address %q; use grpcs://", cfg.CPAddress)
	}
	if cfg.CACertFile != "" && cfg.CACert != "" {
		return proxy.Target{}, nil, "", errors.New("--ca-cert: give it or --ca-cert-file, not both")
	}
	var tlsCfg *tls.Config
	switch {
	case target.TLS && cfg.CACert != "":
		if tlsCfg, err = proxy.ClientTLSPEM(target.Host, []byte(cfg.CACert)); err != nil {
			return proxy.Target{}, nil, "", fmt.Errorf("--ca-cert: %w", err)
		}
	case target.TLS:
		if tlsCfg, err = proxy.ClientTLS(target.Host, cfg.CACertFile); err != nil {
			return proxy.Target{}, nil, "", fmt.Errorf("--ca-cert-file: %w", err)
		}
	}
	var token string
	if cfg.TokenFile != "" {
		b, err := os.ReadFile(cfg.TokenFile)
		if err != nil {
			return proxy.Target{}, nil, "", fmt.Errorf("--token-file: %w", err)
		}
		token = strings.TrimSpace(string(b))
	}
	return target, tlsCfg, token, nil
}

// exitNowKey is the context value signalContext stores: the context the
// second signal ends.
type exitNowKey struct{}

// signalContext is a context the first SIGTERM or SIGINT ends; the second
// ends exitNow's (the drain, cut short).
func signalContext() context.Context {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	stop, stopped := context.WithCancelCause(context.Background())
	now, hurry := context.WithCancelCause(context.Background())
	go func() {
		stopped(fmt.Errorf("signal %s", <-sigs))
		hurry(fmt.Errorf("second signal %s", <-sigs))
	}()
	return context.WithValue(stop, exitNowKey{}, now)
}

// exitNow is the context of ctx (signalContext's) that ends when the
// process is to exit at once; never ending without one.
func exitNow(ctx context.Context) context.Context {
	if now, ok := ctx.Value(exitNowKey{}).(context.Context); ok {
		return now
	}
	return context.Background()
}

// readyHandler is the admin's GET /ready: 200 once the proxy has its
// configuration, 503 before, and while it drains, so that kubelets and load
// balancers stop sending to it.
func readyHandler(p *proxy.Proxy) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		switch {
		case p.Draining():
			http.Error(w, "draining", http.StatusServiceUnavailable)
		case !p.Ready():
			http.Error(w, "no configuration yet", http.StatusServiceUnavailable)
		default:
			fmt.Fprintln(w, "ok")
		}
	}
}

// drain drains p after the first signal (ctx's end) for at most d, less
// when a second signal comes.
func drain(ctx context.Context, log *zap.Logger, p *proxy.Proxy, d time.Duration, exitWhenIdle bool) {
	dctx, cancel := context.WithTimeoutCause(exitNow(ctx), d, fmt.Errorf("--drain-time %s over", d))
	defer cancel()
	log.Info("draining before exit", zap.NamedError("why", context.Cause(ctx)), zap.Duration("drain_time", d), zap.Bool("exit_when_idle", exitWhenIdle))
	if exitWhenIdle {
		if err := p.Drain(dctx); err != nil {
			log.Warn("exiting with connections cut", zap.Error(err))
		}
		return
	}
	// The whole drain time: the outbound listeners go on taking the
	// application's calls, and Drain's end (with the last connection)
	// is not the proxy's.
	go p.Drain(dctx)
	<-dctx.Done()
	log.Info("drain time over", zap.NamedError("why", context.Cause(dctx)))
}

// runProxy runs the built-in proxy as node id until ctx ends, then drains
// it (--drain-time).
func runProxy(ctx context.Context, cfg runConfig, nodeID string, meta map[string]string) error {
	if cfg.DrainTime.Duration < 0 {
		return fmt.Errorf("--drain-time %s: want 0 (no drain) or more", cfg.DrainTime.Duration)
	}
	if cfg.GcHeapFloorMb < 0 || cfg.GcHeapFloorMb > maxGCHeapFloorMB {
		return fmt.Errorf("--gc-heap-floor-mb %d: want 0 (Go's default) to %d", cfg.GcHeapFloorMb, maxGCHeapFloorMB)
	}
	target, tlsCfg, token, err := dialSettings(cfg)
	if err != nil {
		return err
	}
	var redirect *tproxy.Config
	if cfg.TransparentProxy {
		if redirect, err = redirectFor(cfg, meta); err != nil {
			return err
		}
		redirect.Owner = tproxy.OwnerOf(nodeID)
		if uid := os.Getuid(); cfg.TransparentProxyInstalled && len(redirect.ExcludeUIDs) > 0 && !slices.Contains(redirect.ExcludeUIDs, uid) {
			return fmt.Errorf("--exclude-outbound-uids %q: not this proxy's own user (%d), whose connections the installed rules would then send back to it", cfg.ExcludeOutboundUIDs, uid)
		}
	} else if cfg.TransparentProxyInstalled {
		return errors.New("--transparent-proxy-installed: with --transparent-proxy only")
	}
	switch cfg.Proxy {
	case "builtin":
	case "envoy":
		if redirect != nil {
			return errors.New("--transparent-proxy: with the built-in proxy only, for now")
		}
		if cfg.CACert != "" {
			return errors.New("--ca-cert: with the built-in proxy only; give Envoy --ca-cert-file")
		}
		o := bootstrap.Options{NodeID: nodeID, Metadata: meta, CPAddress: target.Address, Plaintext: !target.TLS,
			CACertFile: cfg.CACertFile, Token: token, AdminAddress: cfg.AdminAddr}
		switch {
		case target.TLS && o.CACertFile == "":
			if o.CACertFile, err = bootstrap.SystemCAFile(); err != nil {
				return fmt.Errorf("--proxy envoy: %w", err)
			}
		case target.TLS:
			if o.CACertFile, err = filepath.Abs(o.CACertFile); err != nil { // Envoy may run elsewhere
				return fmt.Errorf("--ca-cert-file: %w", err)
			}
		}
		return runEnvoy(ctx, o)
	default:
		return fmt.Errorf("--proxy %q: use builtin or envoy", cfg.Proxy)
	}
	log, err := logging.New(cfg.Log.Level)
	if err != nil {
		return err
	}
	defer log.Sync()
	log = log.With(zap.String("proxy", nodeID))
	gctune.HeapFloor(ctx, uint64(cfg.GcHeapFloorMb)<<20, log)
	reg := prometheus.NewRegistry()
	p, err := proxy.New(log.Named("proxy"), reg)
	if err != nil {
		return err
	}
	defer p.Close()
	// Bound before any rule goes in, like every port checked below: a
	// start that fails changes nothing.
	ln, err := net.Listen("tcp", cfg.AdminAddr)
	if err != nil {
		return fmt.Errorf("--admin-addr: %w", err)
	}
	defer ln.Close()
	if addr := meta[api.MetadataDNSAddress]; addr != "" {
		p.DNSUpstreams = dnsUpstreams(cfg.ResolvConf, addr, log)
		if redirect != nil {
			limitDNS(redirect, p.DNSUpstreams, cfg.ResolvConf, log)
		}
	}
	if redirect != nil {
		if err := redirect.CheckFree(meta[api.MetadataDNSAddress]); err != nil {
			return fmt.Errorf("--transparent-proxy: %w", err)
		}
	}
	if redirect != nil && cfg.TransparentProxyInstalled {
		// The rules install-transparent-proxy installed (a pod's init
		// container, a unit's ExecStartPre) let this proxy's traffic
		// through by its user. It marks its sockets too when it may
		// (CAP_NET_ADMIN, as ursa-dp@.service grants): its own connections
		// to this host's address at an inbound port (an instance calling
		// itself) then go to its inbound listener, as the rules' first
		// says. It never touches the rules.
		if tproxy.CanMark() {
			p.Mark = redirect.Mark
		}
		log.Info("transparent proxy installed by ursa-dp install-transparent-proxy: left as it is",
			zap.Ints("inbound_ports", redirect.InboundPorts), zap.Bool("inbound_all_ports", redirect.InboundAllPorts), zap.Bool("marks_sockets", p.Mark != 0))
	} else if redirect != nil {
		// Before the proxy connects anywhere: its sockets carry the mark
		// the rules let through. Removed on every way out, SIGTERM
		// included (ctx ends); after a SIGKILL the next start replaces the
		// leftovers.
		p.Mark = redirect.Mark
		if len(redirect.InboundPorts) == 0 && !redirect.InboundAllPorts {
			log.Info("inbound TCP is not redirected: the zone sends a listener per inbound, on the Dataplane's address",
				zap.String("why", inboundWhy(cfg)))
		}
		if err := tproxy.Install(ctx, log.Named("tproxy"), *redirect); err != nil {
			return fmt.Errorf("--transparent-proxy: %w", err)
		}
		defer func() {
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			if err := tproxy.Remove(ctx, log.Named("tproxy"), redirect.BinDir); err != nil {
				log.Error("transparent proxy left in place", zap.Error(err))
			}
		}()
	}
	client := &proxy.Client{Address: target.Address, TLS: tlsCfg, NodeID: nodeID, Token: token, TokenFile: cfg.TokenFile, Metadata: meta, Proxy: p, Log: log.Named("xds"),
		ReportLoad: meta[api.MetadataIngress] != "true"} // an ingress has no callers of its own
	if meta[api.MetadataIngress] != "true" {
		// A sidecar's key is made here and never leaves: the CP certifies
		// it from the CSR. (An ingress terminates no TLS: it has none.)
		key, csr, err := proxy.NewKey(nodeID)
		if err != nil {
			return err
		}
		client.Key, meta[api.MetadataCSR] = key, string(csr)
	}
	mux := http.NewServeMux()
	if cfg.AppProbes != "" {
		h, err := appProbes(cfg.AppProbes, cfg.AppProbeHost)
		if err != nil {
			return fmt.Errorf("--app-probes: %w", err)
		}
		mux.Handle("GET /probes/", h)
	}
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /ready", readyHandler(p))
	r := run.New(log)
	r.Add("admin", run.HTTPServer(&http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, ln, 5*time.Second))
	r.Add("xds", client)
	if !target.TLS {
		log.Warn("INSECURE: xDS without TLS (--xds-insecure): the zone CP is not verified and this proxy's keys cross the network in the clear")
	}
	log.Info("sidecar starting", zap.String("cp", cfg.CPAddress), zap.String("admin_addr", ln.Addr().String()))
	// The components (xDS, the admin's /ready) run on through the drain,
	// which the first signal starts; its end stops them.
	runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	defer stop()
	go func() {
		select {
		case <-ctx.Done():
			drain(ctx, log, p, cfg.DrainTime.Duration, cfg.DrainExitWhenIdle)
			stop()
		case <-runCtx.Done():
		}
	}()
	return r.Run(runCtx)
}

// inboundRedirect adds to c the redirection of inbound TCP to the
// Dataplane's inbound ports (less --exclude-inbound-ports): there is one
// to install (c.InboundPorts) with --dataplane-file, a
// --redirect-inbound-port, and a port left.
func inboundRedirect(cfg runConfig, c *tproxy.Config) error {
	excluded, err := tproxy.ParsePorts(cfg.ExcludeInboundPorts)
	if err != nil {
		return fmt.Errorf("--exclude-inbound-ports: %w", err)
	}
	// The port is set (and validated with the others) even when no port
	// is redirected to it: nothing jumps to its rule then.
	c.InboundPort, c.ExcludeInboundPorts = cfg.RedirectInboundPort, excluded
	if cfg.RedirectAllInbound {
		return allInbound(cfg, c)
	}
	if c.InboundPort == 0 {
		return nil
	}
	c.InboundPorts = slices.DeleteFunc(slices.Concat(cfg.inboundPorts, cfg.servicePorts), func(p int) bool { return slices.Contains(excluded, p) })
	if len(c.InboundPorts) == 0 {
		return nil // the zone serves each inbound at a listener of its own
	}
	// With inbound redirection the zone serves every inbound through
	// ursa:inbound and none at a listener of its own: an excluded inbound
	// port would reach no sidecar.
	for _, p := range cfg.inboundPorts {
		if slices.Contains(excluded, p) {
			return fmt.Errorf("--exclude-inbound-ports: %d is an inbound port of the Dataplane, whose callers would then reach no sidecar "+
				"(inbounds are served through the redirection, or all at listeners of their own); exclude every inbound port, or none", p)
		}
	}
	return nil
}

// allInbound is inboundRedirect with --redirect-all-inbound: every port but
// the excluded ones and the sidecar's own, of which --admin-addr's is the
// one the rules cannot tell (the redirect ports they know).
func allInbound(cfg runConfig, c *tproxy.Config) error {
	if c.InboundPort == 0 {
		return errors.New("--redirect-all-inbound: with --redirect-inbound-port 0 there is nowhere to redirect to")
	}
	c.InboundAllPorts = true
	c.InboundPorts = slices.Concat(cfg.inboundPorts, cfg.servicePorts)
	if cfg.AdminAddr != "" {
		_, port, err := net.SplitHostPort(cfg.AdminAddr)
		p, perr := strconv.Atoi(port)
		if err != nil || perr != nil {
			return fmt.Errorf("--admin-addr %q: want HOST:PORT", cfg.AdminAddr)
		}
		if p != 0 {
			c.SidecarPorts = append(c.SidecarPorts, p)
		}
	}
	// An excluded inbound port would reach no sidecar; an excluded
	// service port of one is the app's own, which the CP's inbound
	// listener would close anyway.
	for _, p := range cfg.inboundPorts {
		if slices.Contains(c.ExcludeInboundPorts, p) {
			return fmt.Errorf("--exclude-inbound-ports: %d is an inbound port of the Dataplane, whose callers would then reach no sidecar", p)
		}
	}
	return nil
}

// inboundWhy says why inboundRedirect added nothing.
func inboundWhy(cfg runConfig) string {
	switch {
	case cfg.RedirectInboundPort == 0:
		return "--redirect-inbound-port 0"
	case len(cfg.inboundPorts) == 0:
		return "--dataplane-name: the Dataplane's inbound ports are not known at start; use --dataplane-file"
	default:
		return "--exclude-inbound-ports excludes every inbound port"
	}
}

// runEnvoy writes an Envoy bootstrap pointing at the zone CP and supervises
// envoy until ctx ends or envoy exits.
func runEnvoy(ctx context.Context, o bootstrap.Options) error {
	bin, err := exec.LookPath("envoy")
	if err != nil {
		return errors.New("--proxy envoy: envoy is not on PATH; install Envoy, or run with --proxy builtin")
	}
	b, err := bootstrap.JSON(o)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "ursa-dp-envoy")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	file := filepath.Join(dir, "bootstrap.json")
	if err := os.WriteFile(file, b, 0o600); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, bin, "-c", file, "--drain-time-s", "5")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Run(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("envoy: %w", err)
	}
	return nil
}

// readDataplaneFile reads and validates the Dataplane of --dataplane-file,
// returning it and the document as written (sent as node metadata).
func readDataplaneFile(path string) (*api.Dataplane, []byte, error) {
	doc, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("--dataplane-file: %w", err)
	}
	r, err := api.DecodeAs(doc, "Dataplane")
	if err == nil {
		err = api.Validate(r)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("--dataplane-file %s: %w", path, err)
	}
	return r.(*api.Dataplane), doc, nil
}
