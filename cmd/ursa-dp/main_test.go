package main

import (
	"context"
	"io"
	"math"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/ursamesh/ursa/pkg/proxy/tproxy"
)

// TestInboundRedirect: inbound TCP is redirected to the Dataplane's inbound
// ports and service ports less the excluded ones, only when they are known
// (--dataplane-file) and a port is left; a bad port list, an excluded
// inbound port while others are redirected, or a redirect port taken by
// the outbound one is an error.
func TestInboundRedirect(t *testing.T) {
	for _, tc := range []struct {
		name     string
		port     int
		known    []int
		service  []int
		exclude  string
		want     []int
		why, err string
	}{
		{name: "file", port: 15006, known: []int{8080, 9090}, want: []int{8080, 9090}},
		{name: "one inbound excluded", port: 15006, known: []int{8080, 9090}, exclude: "9090", err: "9090 is an inbound port of the Dataplane"},
		{name: "service ports", port: 15006, known: []int{10011, 9090}, service: []int{8080}, want: []int{10011, 9090, 8080}},
		{name: "service port excluded", port: 15006, known: []int{10011}, service: []int{8080}, exclude: "8080", want: []int{10011}},
		{name: "inbound of a service port excluded", port: 15006, known: []int{10011}, service: []int{8080}, exclude: "10011", err: "10011 is an inbound port"},
		{name: "all of both excluded", port: 15006, known: []int{10011}, service: []int{8080}, exclude: "8080,10011", why: "--exclude-inbound-ports"},
		{name: "all excluded", port: 15006, known: []int{8080}, exclude: "8080", why: "--exclude-inbound-ports"},
		{name: "by name", port: 15006, why: "--dataplane-name"},
		{name: "off", port: 0, known: []int{8080}, why: "--redirect-inbound-port 0"},
		{name: "bad list", port: 15006, known: []int{8080}, exclude: "x", err: "--exclude-inbound-ports"},
		{name: "outbound's port", port: 15001, known: []int{8080}, err: "outbound and inbound redirect ports are both 15001"},
		{name: "not a port", port: 70000, known: []int{8080}, err: "inbound port 70000"},
	} {
		cfg := runConfig{RedirectInboundPort: tc.port, ExcludeInboundPorts: tc.exclude, inboundPorts: tc.known, servicePorts: tc.service}
		c := tproxy.Config{OutboundPort: tproxy.DefaultOutboundPort}
		err := inboundRedirect(cfg, &c)
		if err == nil {
			err = c.Validate()
		}
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: %v; want an error about %q", tc.name, err, tc.err)
			}
		case err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case !slices.Equal(c.InboundPorts, tc.want):
			t.Errorf("%s: inbound ports %v; want %v", tc.name, c.InboundPorts, tc.want)
		case tc.why != "" && !strings.Contains(inboundWhy(cfg), tc.why):
			t.Errorf("%s: why %q; want it to name %q", tc.name, inboundWhy(cfg), tc.why)
		}
	}
}

// TestParseUIDs: --exclude-outbound-uids takes ids and user names (a
// unit's User=), resolved to their ids; a name the host does not know, or
// that no user could have, is an error naming it.
func TestParseUIDs(t *testing.T) {
	nobody, err := user.Lookup("nobody") // 65534 here, 99 on some
	if err != nil {
		t.Skipf("no user nobody on this host: %v", err)
	}
	nobodyID, _ := strconv.Atoi(nobody.Uid)
	for _, tc := range []struct {
		in   string
		want []int
		err  string
	}{
		{in: "", want: nil},
		{in: "5678", want: []int{5678}},
		{in: "root, 5678", want: []int{0, 5678}},
		{in: "nobody", want: []int{nobodyID}},
		{in: "no-such-user-here", err: `user "no-such-user-here"`},
		{in: "a b", err: `"a b" is neither a user id nor a user name`},
		{in: "-1", err: `"-1" is not a user id`},
		{in: "5678,", err: `"" is neither`},
	} {
		got, err := parseUIDs(tc.in)
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: %v, %v; want an error about %s", tc.in, got, err, tc.err)
			}
		case err != nil:
			t.Errorf("%q: %v", tc.in, err)
		case !slices.Equal(got, tc.want):
			t.Errorf("%q: %v; want %v", tc.in, got, tc.want)
		}
	}
}

// TestAllInboundRedirect: --redirect-all-inbound redirects every port but
// the excluded ones and the admin port, whether the Dataplane's ports are
// known or not, and tells the zone so (the inbound listener with its
// passthrough); it needs an inbound redirect port, and still refuses to
// exclude an inbound port.
func TestAllInboundRedirect(t *testing.T) {
	for _, tc := range []struct {
		name, admin, exclude string
		port                 int
		known                []int
		sidecar              []int
		err                  string
	}{
		{name: "by name", port: 15006, admin: ":9901", sidecar: []int{9901}},
		{name: "file", port: 15006, admin: "127.0.0.1:9901", known: []int{8080}, exclude: "22", sidecar: []int{9901}},
		{name: "no admin", port: 15006},
		{name: "off", port: 0, err: "--redirect-inbound-port 0"},
		{name: "inbound excluded", port: 15006, known: []int{8080}, exclude: "8080", err: "8080 is an inbound port"},
		{name: "bad admin", port: 15006, admin: "9901", err: "--admin-addr"},
	} {
		cfg := runConfig{RedirectAllInbound: true, RedirectInboundPort: tc.port, RedirectOutboundPort: tproxy.DefaultOutboundPort,
			proxyConfig: proxyConfig{AdminAddr: tc.admin}, ExcludeInboundPorts: tc.exclude, inboundPorts: tc.known}
		meta := map[string]string{}
		c, err := redirectFor(cfg, meta)
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: %v; want an error about %q", tc.name, err, tc.err)
			}
		case err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case !c.InboundAllPorts || c.InboundPort != tc.port || !slices.Equal(c.SidecarPorts, tc.sidecar):
			t.Errorf("%s: %+v; want every inbound port to %d but the sidecar's %v", tc.name, c, tc.port, tc.sidecar)
		case meta["ursa.io/transparent-proxy-inbound"] != strconv.Itoa(tc.port) || meta["ursa.io/inbound-passthrough"] != "true":
			t.Errorf("%s: node metadata %v; want the inbound port and the passthrough", tc.name, meta)
		}
	}
}

// TestIngressTakesNoSidecarFlags: ursa-dp ingress offers, and takes, only
// what an ingress uses; a sidecar's flag is refused, naming it.
func TestIngressTakesNoSidecarFlags(t *testing.T) {
	for _, flag := range []string{"--transparent-proxy", "--dataplane-file=f", "--dns-addr=127.0.0.1:1", "--app-probes=8080/ready", "--redirect-all-inbound"} {
		cmd := newIngress()
		cmd.SetArgs([]string{flag})
		cmd.SetOut(io.Discard)
		cmd.SetErr(io.Discard)
		name, _, _ := strings.Cut(strings.TrimPrefix(flag, "--"), "=")
		if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "unknown flag: --"+name) {
			t.Errorf("ursa-dp ingress %s: %v, want it refused as unknown", flag, err)
		}
	}
	for _, name := range []string{"zone-ingress-file", "token-file", "drain-time", "admin-addr", "cp-address"} {
		if newIngress().Flags().Lookup(name) == nil {
			t.Errorf("ursa-dp ingress has no --%s", name)
		}
	}
}

// TestGCHeapFloorFlag: run and ingress take --gc-heap-floor-mb, a floor
// by default; a negative one, or one whose bytes would overflow, is
// refused, naming the flag, before anything starts.
func TestGCHeapFloorFlag(t *testing.T) {
	for _, cmd := range []*cobra.Command{newRun(), newIngress()} {
		f := cmd.Flags().Lookup("gc-heap-floor-mb")
		if f == nil || f.DefValue != strconv.Itoa(defaultGCHeapFloorMB) {
			t.Errorf("ursa-dp %s: --gc-heap-floor-mb %v, want one defaulting to %d", cmd.Name(), f, defaultGCHeapFloorMB)
		}
	}
	cfg := runConfig{proxyConfig: defaultProxyConfig("127.0.0.1:0")}
	for _, bad := range []int{-1, maxGCHeapFloorMB + 1, math.MaxInt} {
		cfg.GcHeapFloorMb = bad
		err := runProxy(context.Background(), cfg, "default.x", nil)
		if err == nil || !strings.Contains(err.Error(), "--gc-heap-floor-mb "+strconv.Itoa(bad)) {
			t.Errorf("runProxy with a heap floor of %d MiB: %v, want it refused naming the flag", bad, err)
		}
	}
}
