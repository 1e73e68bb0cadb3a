package xds

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	dnstable "github.com/envoyproxy/go-control-plane/envoy/data/dns/v3"
	dnsfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/udp/dns_filter/v3"
	"google.golang.org/protobuf/types/known/durationpb"
)

// DNS listener names, and the domain and TTL of a State that sets none.
const (
	// DNSListenerName names the UDP listener that answers .mesh names in
	// the data plane.
	DNSListenerName = "ursa:dns"
	// DNSFilterName is Envoy's UDP DNS filter.
	DNSFilterName = "envoy.filters.udp.dns_filter"
	DNSDomain     = "mesh"
	DNSTTL        = 30 * time.Second
)

// ParseDNSAddress checks the address a proxy asks its DNS listener on
// (node metadata api.MetadataDNSAddress): an IP and a port.
func ParseDNSAddress(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("dns address %q: want IP:port: %w", s, err)
	}
	if ap.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("dns address %q: port 0", s)
	}
	return ap, nil
}

// dnsListener is the UDP listener, at addr, on which a sidecar answers
// <service>.mesh and <service>.<mesh>.mesh with the service's VIP, for
// every service of the mesh that has one, as Envoy's DNS filter does; nil
// when the mesh has no VIP. Names under the domain that are not in the
// table are unknown (NXDOMAIN); others are the proxy's to forward.
func (s *MeshState) dnsListener(addr netip.AddrPort, domain string, answerTTL time.Duration) *listener.Listener {
	if len(s.VIPs) == 0 {
		return nil
	}
	domain = strings.ToLower(strings.Trim(domain, "."))
	if domain == "" {
		domain = DNSDomain
	}
	if answerTTL <= 0 {
		answerTTL = DNSTTL
	}
	return memo(s, fmt.Sprintf("dns|%s|%s|%d", addr, domain, answerTTL), func() *listener.Listener {
		// No known_suffixes: Envoy no longer reads them, and takes a name
		// under a known domain (the parent of a table name: <domain>,
		// <mesh>.<domain>) for one it is the authority for.
		table := &dnstable.DnsTable{}
		ttl := durationpb.New(answerTTL)
		// Two services may spell one name: "billing.default" and billing
		// of mesh default, or "Web" and "web". As in the zone's DNS
		// (dns.NewTable), <service>.<mesh> wins over a <service> that
		// spells the same; else the first service by name: the same
		// answer in every build, not the last one a map's order gave.
		services := slices.Sorted(maps.Keys(s.VIPs))
		byName := map[string]string{}
		for _, suffix := range []string{"." + s.Mesh.Name + "." + domain, "." + domain} {
			for _, svc := range services {
				if n := strings.ToLower(svc + suffix); byName[n] == "" {
					byName[n] = s.VIPs[svc].String()
				}
			}
		}
		for _, n := range slices.Sorted(maps.Keys(byName)) {
			table.VirtualDomains = append(table.VirtualDomains, &dnstable.DnsTable_DnsVirtualDomain{
				Name: n, AnswerTtl: ttl,
				Endpoint: &dnstable.DnsTable_DnsEndpoint{EndpointConfig: &dnstable.DnsTable_DnsEndpoint_AddressList{
					AddressList: &dnstable.DnsTable_AddressList{Address: []string{byName[n]}}}},
			})
		}
		cfg := &dnsfilter.DnsFilterConfig{StatPrefix: "ursa_dns", ServerConfig: &dnsfilter.DnsFilterConfig_ServerContextConfig{
			ConfigSource: &dnsfilter.DnsFilterConfig_ServerContextConfig_InlineDnsTable{InlineDnsTable: table}}}
		return &listener.Listener{
			Name: DNSListenerName,
			Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
				Protocol: core.SocketAddress_UDP, Address: addr.Addr().String(),
				PortSpecifier: &core.SocketAddress_PortValue{PortValue: uint32(addr.Port())}}}},
			ListenerFilters: []*listener.ListenerFilter{{Name: DNSFilterName,
				ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: MustAny(cfg)}}},
		}
	})
}
