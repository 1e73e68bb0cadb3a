// Package tproxy installs and removes the transparent-proxy redirection of a
// network namespace: iptables rules in the nat table that send the host's
// outbound TCP, inbound TCP to the Dataplane's ports (or to every port but
// the excluded ones, Config.InboundAllPorts) and DNS to ursa-dp.
//
// Every rule lives in chains named with ChainPrefix, reached by one jump from
// each of OUTPUT and PREROUTING; Remove deletes exactly those chains and
// jumps, and Install first removes whatever of them a killed ursa-dp left.
// Install and Remove each apply one iptables-restore --noflush transaction,
// so the namespace never holds half a rule set. Only IPv4 is redirected;
// inbound TCP over IPv6 to the Dataplane's inbound ports is sent to the
// inbound port too (ip6tables), where nothing listens for IPv6: an app that
// binds its port on every address is never reached around the sidecar.
// With InboundAllPorts that is every IPv6 port but the excluded ones.
package tproxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"go.uber.org/zap"
)

// ChainPrefix starts the name of every chain this package makes; a chain or
// jump whose target starts with it is ours and nobody else's.
const ChainPrefix = "URSA_"

// The chains, all in the nat table.
const (
	chainOutput     = ChainPrefix + "OUTPUT"      // jumped to from OUTPUT
	chainInbound    = ChainPrefix + "INBOUND"     // jumped to from PREROUTING
	chainRedirect   = ChainPrefix + "REDIRECT"    // → the outbound port
	chainInRedirect = ChainPrefix + "IN_REDIRECT" // → the inbound port
)

// Defaults of the ursa-dp flags.
const (
	DefaultOutboundPort = 15001
	DefaultInboundPort  = 15006
	DefaultDNSPort      = 15053
	// DefaultMark is the SO_MARK the proxy puts on its own upstream and
	// resolver sockets ("ur"): traffic carrying it is never redirected,
	// which is what keeps the proxy out of its own capture when
	// everything runs as root.
	DefaultMark = 0x7572
)

// SSHPort is never redirected inbound with InboundAllPorts: a host's SSH
// must not depend on its sidecar (Istio's rules leave it too).
const SSHPort = 22

// Config is what to redirect. Ports are TCP ports 1–65535.
type Config struct {
	// OutboundPort receives the host's outbound TCP.
	OutboundPort int
	// InboundPort receives inbound TCP to InboundPorts; 0 leaves inbound
	// traffic alone.
	InboundPort int
	// InboundPorts are the Dataplane's inbound ports, redirected to
	// InboundPort unless in ExcludeInboundPorts.
	InboundPorts []int
	// InboundAllPorts redirects inbound TCP to every port to InboundPort,
	// as Istio's and Kuma's rules do, but for ExcludeInboundPorts, SSH's
	// (22) and the sidecar's own (the redirect ports and SidecarPorts); InboundPorts
	// then add nothing. The inbound listener takes a port an inbound has
	// in that inbound's chain, and passes the rest through to the
	// application from ProbeSource, which the rules let out as they are:
	// a port the Dataplane does not list (a metrics port, one a Service
	// names but the pod does not declare) still reaches the application,
	// through the sidecar.
	InboundAllPorts bool
	// SidecarPorts are ports the sidecar itself listens on besides the
	// redirect ports (its admin port): with InboundAllPorts, inbound TCP
	// to them is not redirected.
	SidecarPorts []int
	// DNSPort receives UDP and TCP to port 53 (loopback resolvers
	// included); 0 leaves DNS alone.
	DNSPort int
	// DNSServers, when not nil, limit the DNS redirected to DNSPort to
	// that headed to these addresses (IPv4 only; none of them IPv4: no
	// DNS is redirected): the resolvers of the host's resolv.conf, to
	// which the sidecar forwards the names it does not answer. A local
	// resolver among them (systemd-resolved's 127.0.0.53, a dnsmasq) asks
	// its own upstreams on port 53; redirected, those queries would come
	// back to the sidecar, which forwards them to that resolver again.
	// Nil redirects DNS to any address (when the sidecar forwards
	// nowhere).
	DNSServers []netip.Addr
	// ExcludeOutboundPorts are destination ports outbound TCP reaches
	// directly.
	ExcludeOutboundPorts []int
	ExcludeInboundPorts  []int
	// Mark is the socket mark of the proxy's own traffic (never
	// redirected); 0 means DefaultMark.
	Mark uint32
	// ExcludeUIDs are users whose traffic is never redirected (a
	// dedicated proxy user). Optional: the mark suffices, also for root.
	ExcludeUIDs []int
	// SidecarUIDs are the users of sidecars that cannot mark their sockets
	// (a pod's, among ExcludeUIDs): their connections to this host's
	// address at an inbound port go to the inbound listener, but for their
	// probes of the application, which come from ProbeSource. Other
	// excluded users (a zone CP's, sharing a VM's sidecar's user) are
	// never redirected.
	SidecarUIDs []int
	// BinDir is where iptables-save and iptables-restore are looked for;
	// "" means $PATH.
	BinDir string
	// Owner names the sidecar the rules are for (its node id,
	// mesh.dataplane), written on the jump from OUTPUT: another sidecar's
	// install refuses to replace them, and its cleanup leaves them,
	// before their owner listens on the outbound port too. "" names none.
	Owner string
}

// ProbeSource is the source address of the sidecar's probes of its own
// application (a pod's, for the kubelet), and, with InboundAllPorts, of its
// inbound passthrough (the upstream_bind_config of the zone CP's
// inbound-passthrough cluster): connections from it to this
// host's address are never redirected, so that they reach the application
// at its port, as the kubelet's would, where the sidecar's other
// connections there reach its inbound listener. Istio's rules keep
// 127.0.0.6 for the same (its InboundPassthroughClusterIpv4 binds it).
var ProbeSource = netip.AddrFrom4([4]byte{127, 0, 0, 6})

// ownerPrefix starts the comment that names the rules' owner.
const ownerPrefix = "ursa-dp:"

// OwnerUnknown is the owner a cleanup that cannot tell its own passes to
// RemoveLeftovers: no rules' owner, so it leaves every owner's rules.
const OwnerUnknown = "?"

// ownerName is an owner written as it is: a node id of DNS characters.
var ownerName = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{0,199}$`)

// OwnerOf returns the owner that names nodeID's rules: the node id itself,
// or, when it is longer than an iptables comment takes or holds other
// characters (which iptables-save would escape), a digest of it.
func OwnerOf(nodeID string) string {
	if ownerName.MatchString(nodeID) {
		return nodeID
	}
	sum := sha256.Sum256([]byte(nodeID))
	return "sha256-" + hex.EncodeToString(sum[:16])
}

// Validate says what is wrong with c, or nil.
func (c Config) Validate() error {
	port := func(what string, p int, zero bool) error {
		if p == 0 && zero {
			return nil
		}
		if p < 1 || p > 65535 {
			return fmt.Errorf("%s %d is not a port (1-65535)", what, p)
		}
		return nil
	}
	if err := port("outbound port", c.OutboundPort, false); err != nil {
		return err
	}
	if err := port("inbound port", c.InboundPort, true); err != nil {
		return err
	}
	if err := port("DNS port", c.DNSPort, true); err != nil {
		return err
	}
	seen := map[int]string{c.OutboundPort: "outbound"}
	for what, p := range map[string]int{"inbound": c.InboundPort, "DNS": c.DNSPort} {
		if p == 0 {
			continue
		}
		if other, dup := seen[p]; dup {
			return fmt.Errorf("the %s and %s redirect ports are both %d", other, what, p)
		}
		seen[p] = what
	}
	for what, ps := range map[string][]int{"inbound port": c.InboundPorts, "excluded outbound port": c.ExcludeOutboundPorts, "excluded inbound port": c.ExcludeInboundPorts,
		"sidecar port": c.SidecarPorts} {
		for _, p := range ps {
			if err := port(what, p, false); err != nil {
				return err
			}
		}
	}
	if len(c.InboundPorts) > 0 && c.InboundPort == 0 {
		return errors.New("inbound ports given without an inbound redirect port")
	}
	if c.InboundAllPorts && c.InboundPort == 0 {
		return errors.New("every inbound port redirected without an inbound redirect port")
	}
	for _, u := range c.ExcludeUIDs {
		if u < 0 {
			return fmt.Errorf("uid %d is negative", u)
		}
	}
	for _, u := range c.SidecarUIDs {
		if !slices.Contains(c.ExcludeUIDs, u) {
			return fmt.Errorf("sidecar uid %d is not among the excluded uids %v: its own connections would be redirected back to it", u, c.ExcludeUIDs)
		}
	}
	// An iptables comment of one word, which iptables-save prints as it
	// is (at most 256 bytes, with the prefix).
	if c.Owner != "" && !ownerName.MatchString(c.Owner) {
		return fmt.Errorf("owner %q: want OwnerOf a node id (lower-case letters, digits, dots and dashes, at most 200)", c.Owner)
	}
	return nil
}

func (c Config) mark() uint32 {
	if c.Mark == 0 {
		return DefaultMark
	}
	return c.Mark
}

// rules is the iptables-restore input that installs c, after the lines that
// remove leftovers.
func (c Config) rules() []string {
	r := []string{
		":" + chainOutput + " - [0:0]",
		":" + chainInbound + " - [0:0]",
		":" + chainRedirect + " - [0:0]",
		":" + chainInRedirect + " - [0:0]",
		"-A " + chainRedirect + " -p tcp -j REDIRECT --to-ports " + strconv.Itoa(c.OutboundPort),
	}
	// The sidecar's own connections to this host's address (not loopback)
	// at an inbound port: its mTLS to an instance of its own service that
	// is this one. They go to the inbound listener, as any caller's do
	// (Istio's rules do the same), not around it to the application: by
	// their mark, or by the sidecar's user when it cannot mark (a pod's),
	// but for its probes of its application, which come from ProbeSource.
	inbound := c.redirectedInbound()
	switch {
	case c.InboundAllPorts:
		// Every port but the excluded ones, as chainInbound decides (a
		// port it returns goes on through this chain). The sidecar's
		// connections from ProbeSource, its inbound passthrough's among
		// them, never: redirected, they would come back to the listener
		// they left (Istio: -A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j
		// RETURN; here only the sidecar's, by its mark or its user, as
		// for its probes).
		r = append(r, fmt.Sprintf("-A %s -s %s/32 -o lo -m mark --mark %#x -j RETURN", chainOutput, ProbeSource, c.mark()))
		for _, u := range c.SidecarUIDs {
			r = append(r, fmt.Sprintf("-A %s -s %s/32 -o lo -m owner --uid-owner %d -j RETURN", chainOutput, ProbeSource, u))
		}
		r = append(r, fmt.Sprintf("-A %s -o lo ! -d 127.0.0.0/8 -p tcp -m mark --mark %#x -j %s", chainOutput, c.mark(), chainInbound))
		for _, u := range c.SidecarUIDs {
			r = append(r, fmt.Sprintf("-A %s -o lo ! -d 127.0.0.0/8 -p tcp -m owner --uid-owner %d -j %s", chainOutput, u, chainInbound))
		}
	case len(inbound) > 0:
		for _, u := range c.SidecarUIDs {
			r = append(r, fmt.Sprintf("-A %s -s %s/32 -o lo -m owner --uid-owner %d -j RETURN", chainOutput, ProbeSource, u))
		}
	}
	for _, p := range inbound {
		r = append(r, fmt.Sprintf("-A %s -o lo ! -d 127.0.0.0/8 -p tcp --dport %d -m mark --mark %#x -j %s", chainOutput, p, c.mark(), chainInRedirect))
		for _, u := range c.SidecarUIDs {
			r = append(r, fmt.Sprintf("-A %s -o lo ! -d 127.0.0.0/8 -p tcp --dport %d -m owner --uid-owner %d -j %s", chainOutput, p, u, chainInRedirect))
		}
	}
	r = append(r, fmt.Sprintf("-A %s -m mark --mark %#x -j RETURN", chainOutput, c.mark()))
	for _, u := range c.ExcludeUIDs {
		r = append(r, fmt.Sprintf("-A %s -m owner --uid-owner %d -j RETURN", chainOutput, u))
	}
	// DNS before the loopback exclusion: a resolver at 127.0.0.53 is
	// the usual case on a VM.
	if c.DNSPort != 0 {
		dsts := []string{""}
		if c.DNSServers != nil {
			dsts = nil
			for _, a := range c.DNSServers {
				if a = a.Unmap(); a.Is4() && !slices.Contains(dsts, " -d "+a.String()) {
					dsts = append(dsts, " -d "+a.String())
				}
			}
		}
		for _, d := range dsts {
			for _, proto := range []string{"udp", "tcp"} {
				r = append(r, fmt.Sprintf("-A %s%s -p %s --dport 53 -j REDIRECT --to-ports %d", chainOutput, d, proto, c.DNSPort))
			}
		}
	}
	r = append(r, "-A "+chainOutput+" -d 127.0.0.0/8 -j RETURN")
	for _, p := range sortedUnique(c.ExcludeOutboundPorts) {
		r = append(r, fmt.Sprintf("-A %s -p tcp --dport %d -j RETURN", chainOutput, p))
	}
	r = append(r, "-A "+chainOutput+" -p tcp -j "+chainRedirect)
	r = append(r, c.inboundRules(false)...)
	jump := "-A OUTPUT -j " + chainOutput
	if c.Owner != "" {
		jump = "-A OUTPUT -m comment --comment " + ownerPrefix + c.Owner + " -j " + chainOutput
	}
	return append(r, jump, "-A PREROUTING -p tcp -j "+chainInbound)
}

// ownerOf returns the owner written on our jump from OUTPUT in saved
// (iptables-save -t nat output), "" when there is none.
func ownerOf(saved []byte) string {
	for _, line := range strings.Split(string(saved), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "-A" || f[1] != "OUTPUT" || !slices.Contains(f, chainOutput) {
			continue
		}
		if i := slices.Index(f, "--comment"); i >= 0 && i+1 < len(f) {
			if o, ok := strings.CutPrefix(strings.Trim(f[i+1], `"`), ownerPrefix); ok {
				return o
			}
		}
	}
	return ""
}

// inboundRules are the rules of chainInbound and chainInRedirect.
func (c Config) inboundRules(v6 bool) []string {
	if c.InboundPort == 0 {
		return nil
	}
	r := []string{"-A " + chainInRedirect + " -p tcp -j REDIRECT --to-ports " + strconv.Itoa(c.InboundPort)}
	if c.InboundAllPorts {
		// Only what is headed to this host: not what it forwards, nor a
		// neighbour's packet addressed to loopback (which REDIRECT would
		// otherwise make local before the martian check).
		r = append(r, fmt.Sprintf("-A %s -m addrtype ! --dst-type LOCAL -j RETURN", chainInbound))
		r = append(r, fmt.Sprintf("-A %s -d %s -j RETURN", chainInbound, loopbackOf(v6)))
		for _, p := range c.excludedInbound() {
			r = append(r, fmt.Sprintf("-A %s -p tcp --dport %d -j RETURN", chainInbound, p))
		}
		return append(r, fmt.Sprintf("-A %s -p tcp -j %s", chainInbound, chainInRedirect))
	}
	for _, p := range c.redirectedInbound() {
		r = append(r, fmt.Sprintf("-A %s -p tcp --dport %d -j %s", chainInbound, p, chainInRedirect))
	}
	return r
}

// excludedInbound are the ports that InboundAllPorts leaves alone, sorted:
// ExcludeInboundPorts, the sidecar's own, and SSH's, as Istio's rules
// leave it (a host's SSH must not depend on its sidecar).
func (c Config) excludedInbound() []int {
	ps := slices.Concat(c.ExcludeInboundPorts, c.SidecarPorts, []int{SSHPort, c.OutboundPort, c.InboundPort})
	if c.DNSPort != 0 {
		ps = append(ps, c.DNSPort)
	}
	return sortedUnique(ps)
}

// redirectedInbound are the inbound ports redirected to the inbound
// listener, sorted: none without an inbound redirect port, nor with
// InboundAllPorts (every port is).
func (c Config) redirectedInbound() []int {
	if c.InboundPort == 0 || c.InboundAllPorts {
		return nil
	}
	excluded := map[int]bool{}
	for _, p := range c.ExcludeInboundPorts {
		excluded[p] = true
	}
	var out []int
	for _, p := range sortedUnique(c.InboundPorts) {
		if !excluded[p] {
			out = append(out, p)
		}
	}
	return out
}

// rules6 is the ip6tables-restore input that installs c's inbound
// redirection for IPv6, or nothing when c redirects no inbound port.
func (c Config) rules6() []string {
	in := c.inboundRules(true)
	if len(in) <= 1 {
		return nil
	}
	r := []string{":" + chainInbound + " - [0:0]", ":" + chainInRedirect + " - [0:0]"}
	r = append(r, in...)
	return append(r, "-A PREROUTING -p tcp -j "+chainInbound)
}

func sortedUnique(ps []int) []int {
	seen := map[int]bool{}
	var out []int
	for _, p := range ps {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	sort.Ints(out)
	return out
}

// Install replaces whatever of ours the current network namespace holds
// with the redirection c describes. When the iptables binaries or the
// privilege are missing, or c is invalid, it fails before changing
// anything, with an error that names what is missing.
func Install(ctx context.Context, log *zap.Logger, c Config) error {
	if err := c.Validate(); err != nil {
		return fmt.Errorf("tproxy: %w", err)
	}
	t, saved, err := openSaved(ctx, c.BinDir, false)
	if err != nil {
		return err
	}
	if p := running(saved); p != 0 {
		return fmt.Errorf("tproxy: another ursa-dp's transparent proxy is installed in this network namespace, and running (its outbound port %d is in use); "+
			"one ursa-dp per host runs it", p)
	}
	if o := ownerOf(saved); o != "" && c.Owner != "" && o != c.Owner {
		return fmt.Errorf("tproxy: the transparent proxy of %s is installed in this network namespace; one ursa-dp per host runs it "+
			"(stop that one; if it is gone, ursa-dp cleanup --transparent-proxy, as root, removes what it left)", o)
	}
	old := removal(saved)
	t6, old6, err := open6(ctx, c.BinDir)
	switch {
	case err != nil && len(c.rules6()) > 0:
		return err
	case err != nil:
		// Nothing to install for IPv6, and nothing of ours can be
		// there either: ip6tables' nat table is unusable.
		log.Warn("ip6tables not usable; no IPv6 rules needed", zap.Error(err))
		t6 = nil
	}
	// IPv6 first: when IPv4's transaction fails, IPv6's is undone.
	if t6 != nil && len(old6)+len(c.rules6()) > 0 {
		if err := t6.restore(ctx, append(old6, c.rules6()...)); err != nil {
			return err
		}
	}
	if err := t.restore(ctx, append(old, c.rules()...)); err != nil {
		if t6 != nil {
			if _, undo, err6 := open6(ctx, c.BinDir); err6 == nil && len(undo) > 0 {
				t6.restore(ctx, undo)
			}
		}
		return err
	}
	log.Info("transparent proxy installed", zap.Int("outbound_port", c.OutboundPort), zap.Int("inbound_port", c.InboundPort),
		zap.Int("dns_port", c.DNSPort), zap.Ints("inbound_ports", c.InboundPorts), zap.Bool("inbound_all_ports", c.InboundAllPorts),
		zap.Bool("replaced_leftovers", len(old) > 0))
	return nil
}

// Remove deletes every chain of ours and every jump to one from the
// current network namespace's nat table; with none there, it does nothing.
// binDir is Config.BinDir.
func Remove(ctx context.Context, log *zap.Logger, binDir string) error {
	t, saved, err := openSaved(ctx, binDir, false)
	if err != nil {
		return err
	}
	lines := removal(saved)
	t6, lines6, err := open6(ctx, binDir)
	if err != nil {
		// Install needs ip6tables only for inbound rules, which it
		// cannot have installed with it unusable.
		log.Warn("ip6tables not usable; no IPv6 rules removed", zap.Error(err))
		t6, lines6 = nil, nil
	}
	if len(lines)+len(lines6) == 0 {
		return nil
	}
	if len(lines) > 0 {
		if err := t.restore(ctx, lines); err != nil {
			return err
		}
	}
	if len(lines6) > 0 {
		if err := t6.restore(ctx, lines6); err != nil {
			return err
		}
	}
	log.Info("transparent proxy removed")
	return nil
}

// RemoveLeftovers is Remove, unless the rules are those of a running
// ursa-dp (something listens on their outbound port), or of another owner
// than owner ("" takes any; OwnerUnknown only rules that name none): then
// it leaves them and says so. It is for a
// service manager to run after ursa-dp exits, so that a killed one's rules
// do not stay until the next start.
func RemoveLeftovers(ctx context.Context, log *zap.Logger, binDir, owner string) error {
	_, saved, err := openSaved(ctx, binDir, false)
	if err != nil {
		return err
	}
	if p := running(saved); p != 0 {
		log.Info("transparent proxy left in place: a proxy is running", zap.Int("outbound_port", p))
		return nil
	}
	if o := ownerOf(saved); o != "" && owner != "" && o != owner {
		log.Info("transparent proxy left in place: another sidecar's", zap.String("owner", o))
		return nil
	}
	return Remove(ctx, log, binDir)
}

// running returns the outbound port of the rules of ours in saved when
// something listens on it: the rules are then a running ursa-dp's, not
// leftovers. 0 when nothing does, or there are none.
func running(saved []byte) int {
	for _, line := range strings.Split(string(saved), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "-A" || f[1] != chainRedirect {
			continue
		}
		i := slices.Index(f, "--to-ports")
		if i < 0 || i+1 >= len(f) {
			continue
		}
		p, err := strconv.Atoi(f[i+1])
		if err != nil || p < 1 || p > 65535 {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("0.0.0.0:%d", p))
		if err != nil {
			return p
		}
		l.Close()
	}
	return 0
}

// Installed reports whether the current namespace holds any chain or jump
// of ours.
func Installed(ctx context.Context, binDir string) (bool, error) {
	_, saved, err := openSaved(ctx, binDir, false)
	if err != nil {
		return false, err
	}
	_, old6, _ := open6(ctx, binDir) // unusable: none of ours (see Remove)
	return len(removal(saved))+len(old6) > 0, nil
}

// open6 opens ip6tables and returns the lines that remove what of ours
// its nat table holds; nil tables when the kernel has no IPv6.
func open6(ctx context.Context, binDir string) (*tables, []string, error) {
	if _, err := os.Stat("/proc/thread-self/net/if_inet6"); err != nil {
		return nil, nil, nil
	}
	t, saved, err := openSaved(ctx, binDir, true)
	if err != nil {
		return nil, nil, err
	}
	return t, removal(saved), nil
}

// openSaved opens the binaries (open) and returns the nat table as
// iptables-save prints it.
func openSaved(ctx context.Context, binDir string, v6 bool) (*tables, []byte, error) {
	t, err := open(ctx, binDir, v6)
	if err != nil {
		return nil, nil, err
	}
	saved, err := t.save(ctx)
	if err != nil {
		return nil, nil, err
	}
	return t, saved, nil
}

// removal returns the iptables-restore lines that delete what of ours the
// nat table in saved (iptables-save -t nat output) holds: the jumps first,
// then the chains (a declaration flushes the chain, -X deletes it).
func removal(saved []byte) []string {
	var jumps, chains []string
	sc := bufio.NewScanner(bytes.NewReader(saved))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, ":"+ChainPrefix):
			if name, _, _ := strings.Cut(line[1:], " "); name != "" {
				chains = append(chains, name)
			}
		case strings.HasPrefix(line, "-A "):
			f := strings.Fields(line)
			if strings.HasPrefix(f[1], ChainPrefix) {
				continue // goes with its chain
			}
			for i := 2; i+1 < len(f); i++ {
				if f[i] == "-j" && strings.HasPrefix(f[i+1], ChainPrefix) {
					jumps = append(jumps, "-D "+strings.TrimPrefix(line, "-A "))
					break
				}
			}
		}
	}
	var out []string
	out = append(out, jumps...)
	for _, c := range chains {
		out = append(out, ":"+c+" - [0:0]")
	}
	for _, c := range chains {
		out = append(out, "-X "+c)
	}
	return out
}

// tables runs the iptables binaries.
type tables struct {
	saveBin, restoreBin string
}

// open finds the binaries (ip6tables' with v6) and checks the privilege
// they need, changing nothing.
func open(ctx context.Context, binDir string, v6 bool) (*tables, error) {
	var t tables
	cmd := "iptables"
	if v6 {
		cmd = "ip6tables"
	}
	for _, b := range []struct {
		name string
		path *string
	}{{cmd + "-save", &t.saveBin}, {cmd + "-restore", &t.restoreBin}} {
		var err error
		if binDir != "" {
			*b.path = filepath.Join(binDir, b.name)
			_, err = os.Stat(*b.path)
		} else {
			*b.path, err = exec.LookPath(b.name)
		}
		if err != nil {
			return nil, fmt.Errorf("tproxy: %s not found (install the iptables package: apt-get install iptables): %w", b.name, err)
		}
	}
	if ok, err := netAdmin(); err != nil {
		return nil, fmt.Errorf("tproxy: %w", err)
	} else if !ok {
		return nil, errors.New("tproxy: the transparent proxy needs the CAP_NET_ADMIN capability (run ursa-dp as root or grant it CAP_NET_ADMIN)")
	}
	return &t, nil
}

// CanMark reports whether this process may mark its sockets (SO_MARK needs
// CAP_NET_ADMIN): a sidecar whose rules another installed marks its
// sockets when it can, so that its own connections to this host's address
// reach its inbound listener (the rules' first), as when it installs them.
func CanMark() bool {
	ok, err := netAdmin()
	return err == nil && ok
}

// netAdmin says whether this process holds CAP_NET_ADMIN.
func netAdmin() (bool, error) {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false, fmt.Errorf("read capabilities: %w", err)
	}
	return hasNetAdmin(string(status))
}

// capNetAdmin is CAP_NET_ADMIN's bit in a capability set.
const capNetAdmin = 12

// hasNetAdmin says whether the effective set in a /proc/PID/status text
// holds CAP_NET_ADMIN.
func hasNetAdmin(status string) (bool, error) {
	for _, line := range strings.Split(status, "\n") {
		v, ok := strings.CutPrefix(line, "CapEff:")
		if !ok {
			continue
		}
		set, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		if err != nil {
			return false, fmt.Errorf("effective capabilities %q: %w", strings.TrimSpace(v), err)
		}
		return set&(1<<capNetAdmin) != 0, nil
	}
	return false, errors.New("no CapEff line in /proc/self/status")
}

func (t *tables) save(ctx context.Context) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, t.saveBin, "-t", "nat")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("tproxy: %s -t nat: %w: %s", t.saveBin, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

func (t *tables) restore(ctx context.Context, lines []string) error {
	in := "*nat\n" + strings.Join(lines, "\n") + "\nCOMMIT\n"
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, t.restoreBin, "--noflush")
	cmd.Stdin = strings.NewReader(in)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("tproxy: %s --noflush: %w: %s", t.restoreBin, err, strings.TrimSpace(out.String()))
	}
	return nil
}

// CheckFree says which of c's redirect ports another process already
// holds, so that ursa-dp refuses to start before it installs rules that
// would send the host's traffic to someone else: TCP on every address for
// the outbound and inbound ports, UDP and TCP on dnsAddr for the DNS port
// (the resolver's own address; "" skips it). Each probe socket is closed
// at once.
func (c Config) CheckFree(dnsAddr string) error {
	type probe struct{ what, network, addr string }
	probes := []probe{{"outbound", "tcp", fmt.Sprintf("0.0.0.0:%d", c.OutboundPort)}}
	if c.InboundPort != 0 {
		probes = append(probes, probe{"inbound", "tcp", fmt.Sprintf("0.0.0.0:%d", c.InboundPort)})
	}
	if c.DNSPort != 0 && dnsAddr != "" {
		probes = append(probes, probe{"DNS", "tcp", dnsAddr}, probe{"DNS", "udp", dnsAddr})
	}
	for _, p := range probes {
		var err error
		if p.network == "udp" {
			var pc net.PacketConn
			if pc, err = net.ListenPacket(p.network, p.addr); err == nil {
				pc.Close()
			}
		} else {
			var l net.Listener
			if l, err = net.Listen(p.network, p.addr); err == nil {
				l.Close()
			}
		}
		if err != nil {
			return fmt.Errorf("the %s redirect port (%s %s) is not free: %w", p.what, strings.ToUpper(p.network), p.addr, err)
		}
	}
	return nil
}

func loopbackOf(v6 bool) string {
	if v6 {
		return "::1/128"
	}
	return "127.0.0.0/8"
}
