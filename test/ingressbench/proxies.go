package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	_ "net/http/pprof" // -pprof serves /debug/pprof for profiling under load
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/mtls"
	"github.com/ursamesh/ursa/pkg/proxy"
)

// ingressMain hosts pkg/proxy as a zone ingress from a static Config: one
// listener that routes by the ClientHello's SNI, without terminating TLS,
// to a cluster holding the backend. It is what `ursa-dp ingress` runs once
// the zone CP's xDS has been translated, minus the xDS client.
func ingressMain(args []string) error {
	fs := flag.NewFlagSet("ingress", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:17001", "ingress listener")
	sni := fs.String("sni", "backend.bench", "server name routed to -backend")
	backend := fs.String("backend", "127.0.0.1:17443", "TLS backend")
	pprofAddr := fs.String("pprof", "", "serve net/http/pprof on this address")
	fs.Parse(args)

	// An hour's idle timeout: what a tcp_proxy the CP sends without one
	// gets (Envoy's default), as every ingress and sidecar route does.
	route := []proxy.Route{{Cluster: "backend", Weight: 1, IdleTimeout: time.Hour}}
	return runProxy(&proxy.Config{
		Listeners: map[string]*proxy.Listener{"ingress": {
			Name:      "ingress",
			Addr:      *listen,
			Routes:    route,
			SNIRoutes: map[string][]proxy.Route{*sni: route},
		}},
		Clusters: map[string]*proxy.Cluster{"backend": staticCluster("backend", *backend)},
	}, *pprofAddr)
}

// staticCluster is a cluster with one endpoint and translate's defaults.
func staticCluster(name, addr string) *proxy.Cluster {
	return &proxy.Cluster{
		Name:             name,
		ConnectTimeout:   5 * time.Second,
		Endpoints:        []proxy.Endpoint{{Addr: addr, Weight: 1}},
		Overprovisioning: 140,
	}
}

// sidecarMain hosts pkg/proxy as one side of a sidecar pair with a mesh
// identity: outbound takes plain TCP from the application and originates
// mTLS (with SNI) to the other side; inbound terminates mTLS, requiring a
// mesh client certificate, and passes plain TCP to the application.
func sidecarMain(args []string) error {
	fs := flag.NewFlagSet("sidecar", flag.ExitOnError)
	role := fs.String("role", "", "outbound or inbound")
	listen := fs.String("listen", "", "listener")
	upstream := fs.String("upstream", "", "outbound: the inbound sidecar; inbound: the application")
	dir := fs.String("certs", "", "directory written by mkcerts")
	pprofAddr := fs.String("pprof", "", "serve net/http/pprof on this address")
	fs.Parse(args)

	service := map[string]string{"outbound": "client", "inbound": "billing"}[*role]
	if service == "" {
		return errors.New("-role must be outbound or inbound")
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(*dir, service+".pem"), filepath.Join(*dir, service+"-key.pem"))
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(filepath.Join(*dir, "ca.pem"))
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return errors.New("ca.pem: no certificate")
	}
	cluster := staticCluster("billing", *upstream)
	l := &proxy.Listener{Name: *role, Addr: *listen, Routes: []proxy.Route{{Cluster: "billing", Weight: 1, IdleTimeout: time.Hour}}}
	if *role == "outbound" {
		cluster.TLS, cluster.SNI = true, "billing"
	} else {
		l.TLS = true
	}
	return runProxy(&proxy.Config{
		Listeners: map[string]*proxy.Listener{l.Name: l},
		Clusters:  map[string]*proxy.Cluster{cluster.Name: cluster},
		Identity:  &cert,
		Roots:     roots,
	}, *pprofAddr)
}

func runProxy(cfg *proxy.Config, pprofAddr string) error {
	p, err := proxy.New(zap.NewNop(), prometheus.NewRegistry())
	if err != nil {
		return err
	}
	if err := p.Apply(cfg); err != nil {
		return err
	}
	defer p.Close()
	if pprofAddr != "" {
		ln, err := net.Listen("tcp", pprofAddr)
		if err != nil {
			return err
		}
		go (&http.Server{ReadHeaderTimeout: 5 * time.Second}).Serve(ln)
	}
	for name, l := range cfg.Listeners {
		fmt.Fprintf(os.Stderr, "pkg/proxy: listener %s on %s\n", name, l.Addr)
	}
	waitSignal()
	return nil
}

// mkcertsMain writes a mesh CA and two workload identities issued by it
// with pkg/mtls, as the zone CP's SDS would serve them.
func mkcertsMain(args []string) error {
	fs := flag.NewFlagSet("mkcerts", flag.ExitOnError)
	dir := fs.String("dir", ".", "output directory")
	fs.Parse(args)
	now := time.Now()
	ca, err := mtls.NewCA("default", now)
	if err != nil {
		return err
	}
	files := map[string][]byte{"ca.pem": []byte(ca.CertPEM)}
	for _, svc := range []string{"client", "billing"} {
		id, err := mtls.Issue(ca, svc, 24*time.Hour, now)
		if err != nil {
			return err
		}
		files[svc+".pem"], files[svc+"-key.pem"] = id.CertPEM, id.KeyPEM
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(*dir, name), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}
