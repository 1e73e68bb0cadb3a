package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/ursamesh/ursa/ingress/dataplane"
	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/config"
	"github.com/ursamesh/ursa/pkg/logging"
	"github.com/ursamesh/ursa/pkg/proxy"
	"github.com/ursamesh/ursa/pkg/proxy/tproxy"
)

// newInstallTransparentProxy is ursa-dp install-transparent-proxy: it
// installs, as root, the redirection that a sidecar running as another user
// without privileges (ursa-dp run --transparent-proxy
// --transparent-proxy-installed) relies on, and exits. A pod's init
// container runs it (the rules stay for the pod's life: its network
// namespace goes with it), and so does ursa-dp@.service before the sidecar
// starts (ExecStartPre=+, as root: iptables-legacy needs more than
// CAP_NET_ADMIN), whose ExecStopPost=+ursa-dp cleanup removes them again.
// It takes run's flags and variables, so that both agree by being given the
// same ones: the redirect ports, --dataplane-file's inbound ports or
// --inbound-ports (or --redirect-all-inbound, with --admin-addr),
// --resolv-conf; URSA_TRANSPARENT_PROXY=false (a host's
// other sidecars) installs nothing. The sidecar's traffic passes by its user
// (--exclude-outbound-uids), since it cannot mark its sockets.
func newInstallTransparentProxy() *cobra.Command {
	cfg := runConfig{TransparentProxy: true, DNSAddr: defaultDNSAddr, ResolvConf: "/etc/resolv.conf",
		RedirectOutboundPort: tproxy.DefaultOutboundPort, RedirectInboundPort: tproxy.DefaultInboundPort, RedirectDNSPort: tproxy.DefaultDNSPort}
	cfg.Log.Level = "info"
	var file string
	cmd := &cobra.Command{
		Use:   "install-transparent-proxy",
		Short: "Install the transparent proxy's redirection for a sidecar that runs as another user (a pod's init container, a unit's ExecStartPre), and exit",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := config.Load(cmd.Flags(), &cfg, file); err != nil {
				return err
			}
			log, err := logging.New(cfg.Log.Level)
			if err != nil {
				return err
			}
			defer log.Sync()
			if !cfg.TransparentProxy {
				log.Info("nothing installed: --transparent-proxy=false (another sidecar of this host runs the transparent proxy, or none does)")
				return nil
			}
			if cfg.ExcludeOutboundUIDs == "" {
				return errors.New("--exclude-outbound-uids: required: the sidecar's user, whose own connections must not be redirected back to it")
			}
			owner, err := redirectOwner(&cfg)
			if err != nil {
				return err
			}
			// What the sidecar is given besides (a unit's environment;
			// a pod's init container has none of it): a sidecar that
			// could not start would leave the host's traffic redirected
			// to no one until the unit's cleanup.
			if cfg.CPAddress != "" {
				if _, _, _, err := dialSettings(cfg); err != nil {
					return err
				}
			}
			if cfg.Proxy != "" && cfg.Proxy != "builtin" {
				return fmt.Errorf("--proxy %q: the transparent proxy runs with the built-in proxy only", cfg.Proxy)
			}
			meta := map[string]string{}
			if cfg.DNSAddr != "" {
				meta[api.MetadataDNSAddress] = cfg.DNSAddr
			}
			redirect, err := redirectFor(cfg, meta)
			if err != nil {
				return err
			}
			redirect.Owner = owner
			if redirect.DNSPort != 0 {
				limitDNS(redirect, dnsUpstreams(cfg.ResolvConf, meta[api.MetadataDNSAddress], log), cfg.ResolvConf, log)
			}
			// As run checks before it installs: rules that send the
			// host's traffic to a port another process holds would hand
			// it that traffic.
			if err := redirect.CheckFree(meta[api.MetadataDNSAddress]); err != nil {
				return fmt.Errorf("install-transparent-proxy: %w", err)
			}
			if err := tproxy.Install(cmd.Context(), log.Named("tproxy"), *redirect); err != nil {
				return fmt.Errorf("install-transparent-proxy: %w", err)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&file, "config", os.Getenv("URSA_CONFIG"), "YAML config file (env URSA_CONFIG)")
	config.Bind(cmd.Flags(), &cfg)
	// Accepted, so that one environment serves both containers, but of no
	// use here: not shown.
	for _, f := range []string{"cp-address", "ca-cert", "ca-cert-file", "xds-insecure", "dataplane-name", "zone-ingress-file", "zone-ingress-name",
		"mesh", "token-file", "proxy", "admin-addr", "transparent-proxy", "transparent-proxy-installed", "app-probes", "app-probe-host"} {
		cmd.Flags().MarkHidden(f)
	}
	return cmd
}

// redirectFor returns the redirection cfg asks for (--transparent-proxy),
// setting the node metadata that tells the zone about it.
func redirectFor(cfg runConfig, meta map[string]string) (*tproxy.Config, error) {
	excluded, err := tproxy.ParsePorts(cfg.ExcludeOutboundPorts)
	if err != nil {
		return nil, fmt.Errorf("--exclude-outbound-ports: %w", err)
	}
	uids, err := parseUIDs(cfg.ExcludeOutboundUIDs)
	if err != nil {
		return nil, fmt.Errorf("--exclude-outbound-uids: %w", err)
	}
	sidecar, err := parseUIDs(cfg.SidecarUID)
	if err != nil {
		return nil, fmt.Errorf("--sidecar-uid: %w", err)
	}
	redirect := &tproxy.Config{OutboundPort: cfg.RedirectOutboundPort, ExcludeOutboundPorts: excluded, Mark: tproxy.DefaultMark, ExcludeUIDs: uids, SidecarUIDs: sidecar}
	if err := inboundRedirect(cfg, redirect); err != nil {
		return nil, err
	}
	if meta[api.MetadataDNSAddress] != "" {
		redirect.DNSPort = cfg.RedirectDNSPort
	}
	if err := redirect.Validate(); err != nil {
		return nil, fmt.Errorf("--transparent-proxy: %w", err)
	}
	if redirect.DNSPort != 0 {
		// REDIRECT sends a host's own packets to 127.0.0.1.
		at := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(redirect.DNSPort)).String()
		if dns := meta[api.MetadataDNSAddress]; dns != at && dns != defaultDNSAddr {
			return nil, fmt.Errorf("--dns-addr %s: with --transparent-proxy the resolver answers the redirected DNS on %s (--redirect-dns-port %d); drop --dns-addr, or set --redirect-dns-port 0 to leave DNS alone", dns, at, redirect.DNSPort)
		}
		meta[api.MetadataDNSAddress] = at
	}
	meta[api.MetadataTransparentProxy] = strconv.Itoa(cfg.RedirectOutboundPort)
	if len(redirect.InboundPorts) > 0 || redirect.InboundAllPorts {
		meta[api.MetadataTransparentInbound] = strconv.Itoa(redirect.InboundPort)
	}
	if redirect.InboundAllPorts {
		meta[api.MetadataInboundPassthrough] = "true"
	}
	return redirect, nil
}

// dnsUpstreams returns the resolvers of resolvConf, less the sidecar's own
// listener at addr.
func dnsUpstreams(resolvConf, addr string, log *zap.Logger) []string {
	ups, err := proxy.ResolvConf(resolvConf)
	if err != nil {
		log.Warn("names outside .mesh will be refused: no resolvers", zap.String("resolv_conf", resolvConf), zap.Error(err))
	}
	// Never forward to ourselves (a resolv.conf that names this listener).
	return slices.DeleteFunc(ups, func(u string) bool { return u == addr })
}

// limitDNS redirects only the DNS headed to the resolvers the sidecar
// forwards to: a local resolver's queries to its upstreams must not come
// back. With none, DNS to any address is redirected.
func limitDNS(redirect *tproxy.Config, upstreams []string, resolvConf string, log *zap.Logger) {
	if len(upstreams) == 0 {
		return
	}
	redirect.DNSServers = []netip.Addr{}
	for _, u := range upstreams {
		if ap, err := netip.ParseAddrPort(u); err == nil {
			redirect.DNSServers = append(redirect.DNSServers, ap.Addr())
			if !ap.Addr().Unmap().Is4() {
				// Only IPv4 is redirected: an app that asks this
				// resolver gets no .mesh names.
				log.Warn("DNS to an IPv6 resolver of resolv.conf is not redirected to the sidecar: apps that ask it do not resolve .mesh names; list an IPv4 resolver (or only IPv4 ones) in resolv.conf",
					zap.String("resolver", u), zap.String("resolv_conf", resolvConf))
			}
		}
	}
}

// parseUIDs parses a comma-separated list of users: ids, or names this
// host's user database resolves (a unit's User=).
func parseUIDs(s string) ([]int, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var uids []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		u, err := strconv.Atoi(f)
		if err != nil {
			// A name: what the kernel matches is its id.
			if !validUserName(f) {
				return nil, fmt.Errorf("%q is neither a user id nor a user name", f)
			}
			usr, lerr := user.Lookup(f)
			if lerr != nil {
				return nil, fmt.Errorf("user %q: %w (a static build looks names up in /etc/passwd alone: give a user of a directory service by its id)", f, lerr)
			}
			if u, err = strconv.Atoi(usr.Uid); err != nil {
				return nil, fmt.Errorf("user %q has the id %q, not a number", f, usr.Uid)
			}
		}
		if u < 0 || u > 1<<31-2 {
			return nil, fmt.Errorf("%q is not a user id", f)
		}
		uids = append(uids, u)
	}
	return uids, nil
}

// ingressNode is an ingress's node: the ZoneIngress of --zone-ingress-file,
// presented and registered, or the one --zone-ingress-name names, already
// registered (a Kubernetes zone's pod controller makes an ingress pod's).
func ingressNode(cfg ingressConfig) (string, map[string]string, error) {
	switch {
	case cfg.ZoneIngressName != "" && cfg.ZoneIngressFile != "":
		return "", nil, errors.New("--zone-ingress-name: give it or --zone-ingress-file, not both")
	case cfg.ZoneIngressName != "":
		if msg := api.CheckName(cfg.ZoneIngressName); msg != "" {
			return "", nil, fmt.Errorf("--zone-ingress-name %q: %s", cfg.ZoneIngressName, msg)
		}
		return cfg.ZoneIngressName, map[string]string{api.MetadataIngress: "true"}, nil
	case cfg.ZoneIngressFile == "":
		return "", nil, errors.New("give --zone-ingress-file, or --zone-ingress-name (an ingress pod's ZoneIngress, which a Kubernetes zone makes)")
	}
	return dataplane.Node(cfg.ZoneIngressFile)
}

// validUserName says whether s is a user name as useradd takes them (the
// portable set, at most 32 characters).
func validUserName(s string) bool {
	if s == "" || len(s) > 32 || s[0] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}
