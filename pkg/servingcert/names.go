package servingcert

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
)

// Names are the subject alternative names of a leaf, sorted and without
// duplicates. DNS[0] is "localhost".
type Names struct {
	DNS []string
	IP  []netip.Addr
}

// IPs returns the addresses as net.IP, as x509 wants them.
func (n Names) IPs() []net.IP {
	out := make([]net.IP, len(n.IP))
	for i, a := range n.IP {
		out[i] = a.AsSlice()
	}
	return out
}

// Strings lists every name, DNS names first, for logs.
func (n Names) Strings() []string {
	out := slices.Clone(n.DNS)
	for _, a := range n.IP {
		out = append(out, a.String())
	}
	return out
}

// CheckSAN accepts a DNS name (a "*." wildcard first label allowed) or an IP
// address, as --xds-tls-san and --kds-tls-san take, and says what is wrong
// with anything else.
func CheckSAN(s string) error {
	if _, err := parseSAN(s); err != nil {
		return fmt.Errorf("%q is neither a DNS name nor an IP address: %w", s, err)
	}
	return nil
}

// CheckSettings checks a server's TLS settings as a config file names them
// under key ("api", "kds", "xds"): key.tlsCert and key.tlsKey go together,
// key.tlsSan names only the certificate made here, and each SAN passes
// CheckSAN. It returns every problem found.
func CheckSettings(key, certFile, keyFile string, sans []string) []error {
	var errs []error
	if (certFile == "") != (keyFile == "") {
		errs = append(errs, fmt.Errorf("%[1]s.tlsCert and %[1]s.tlsKey: give both or neither", key))
	}
	if certFile != "" && len(sans) > 0 {
		errs = append(errs, fmt.Errorf("%[1]s.tlsSan: names only the self-signed certificate; a given %[1]s.tlsCert is served as it is", key))
	}
	for _, san := range sans {
		if err := CheckSAN(san); err != nil {
			errs = append(errs, fmt.Errorf("%s.tlsSan: %w", key, err))
		}
	}
	return errs
}

// parseSAN returns an IP address, or the zero Addr for a valid DNS name.
func parseSAN(s string) (netip.Addr, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		if a.Zone() != "" {
			return netip.Addr{}, errors.New("an IPv6 zone (%…) cannot be named in a certificate")
		}
		return a.Unmap(), nil
	}
	if s == "" {
		return netip.Addr{}, errors.New("empty")
	}
	if len(s) > 253 {
		return netip.Addr{}, errors.New("longer than 253 characters")
	}
	labels := strings.Split(s, ".")
	for i, l := range labels {
		if l == "*" && i == 0 && len(labels) > 2 {
			continue
		}
		if err := checkLabel(l); err != nil {
			return netip.Addr{}, fmt.Errorf("label %q: %w", l, err)
		}
	}
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return netip.Addr{}, errors.New("its last label is all digits, as in a malformed IP address")
	}
	return netip.Addr{}, nil
}

func checkLabel(l string) error {
	switch {
	case l == "":
		return errors.New("empty (two dots in a row, or a dot at an end)")
	case len(l) > 63:
		return errors.New("longer than 63 characters")
	case l[0] == '-' || l[len(l)-1] == '-':
		return errors.New("starts or ends with a hyphen")
	}
	for _, r := range l {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
			return fmt.Errorf("%q is not a letter, digit or hyphen", r)
		}
	}
	return nil
}

// NamesFor returns the names a leaf for a server listening on listen
// carries: localhost and the loopback addresses, this host's name, the
// listen host (every interface address when it is empty, 0.0.0.0 or ::) and
// extra.
func NamesFor(listen string, extra []string) (Names, error) {
	host, _ := os.Hostname()
	return namesFor(listen, extra, host, net.InterfaceAddrs)
}

func namesFor(listen string, extra []string, hostname string, interfaceAddrs func() ([]net.Addr, error)) (Names, error) {
	dns := map[string]bool{"localhost": true}
	ips := map[netip.Addr]bool{netip.MustParseAddr("127.0.0.1"): true, netip.IPv6Loopback(): true}
	add := func(s string) error {
		a, err := parseSAN(s)
		switch {
		case err != nil:
			return err
		case a.IsValid():
			ips[a] = true
		default:
			dns[strings.ToLower(s)] = true
		}
		return nil
	}
	if hostname != "" {
		_ = add(hostname) // a host name that is no DNS name is left out
	}
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return Names{}, fmt.Errorf("listen address %q: %w", listen, err)
	}
	if a, err := netip.ParseAddr(host); host == "" || (err == nil && a.IsUnspecified()) {
		addrs, err := interfaceAddrs()
		if err != nil {
			return Names{}, fmt.Errorf("list this host's addresses: %w", err)
		}
		for _, ad := range addrs {
			if p, err := netip.ParsePrefix(ad.String()); err == nil {
				ips[p.Addr().Unmap().WithZone("")] = true
			}
		}
	} else if err := add(host); err != nil {
		return Names{}, fmt.Errorf("listen address %q: %w", listen, err)
	}
	for _, s := range extra {
		if err := add(s); err != nil {
			return Names{}, fmt.Errorf("%q is neither a DNS name nor an IP address: %w", s, err)
		}
	}
	n := Names{}
	for d := range dns {
		if d != "localhost" {
			n.DNS = append(n.DNS, d)
		}
	}
	slices.Sort(n.DNS)
	n.DNS = append([]string{"localhost"}, n.DNS...)
	for a := range ips {
		n.IP = append(n.IP, a)
	}
	slices.SortFunc(n.IP, func(a, b netip.Addr) int { return a.Compare(b) })
	return n, nil
}
