package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/ursamesh/ursa/pkg/proxy/tproxy"
)

// appProbes serves GET /probes/PORT/PATH on the admin port for the
// PORT/PATH pairs of --app-probes (8080/ready,8080/healthz; https:PORT/PATH
// over TLS, unverified as the kubelet's; tcp:PORT a connection;
// grpc:PORT[/SERVICE] a plaintext grpc.health.v1 Check, SERVING or not, as
// the kubelet's gRPC probe): the kubelet's
// plain-HTTP probe of an app port redirected to the sidecar would reach its
// inbound listener, which takes mTLS only, so the injector points the probe
// here and the sidecar makes it of the app at host:PORT (the pod's IP, as
// the kubelet would, from tproxy.ProbeSource, which the rules let through). Only the
// listed pairs are served: the admin port is reachable from the pod
// network, and must not become a way around mTLS to the app.
func appProbes(list, host string) (http.Handler, error) {
	if net.ParseIP(host) == nil {
		return nil, fmt.Errorf("--app-probe-host %q is not an IP address", host)
	}
	allowed := map[string]bool{}
	for _, pair := range strings.Split(list, ",") {
		pair = strings.TrimSpace(pair)
		port, _, ok := strings.Cut(strings.TrimPrefix(pair, "https:"), "/")
		if p, isTCP := strings.CutPrefix(pair, "tcp:"); isTCP {
			port, ok = p, true
		}
		if p, isGRPC := strings.CutPrefix(pair, "grpc:"); isGRPC {
			port, _, _ = strings.Cut(p, "/")
			ok = true
		}
		if n, err := strconv.Atoi(port); !ok || err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("%q is none of PORT/PATH, https:PORT/PATH, tcp:PORT and grpc:PORT[/SERVICE]", pair)
		}
		allowed[pair] = true
	}
	// As the kubelet's: a probe checks the app is up, not who it is. From
	// tproxy.ProbeSource (an IPv4 host), which the transparent proxy's
	// rules let reach the app, where the sidecar's other connections to
	// the pod's own address go to its inbound listener.
	insecure := &tls.Config{InsecureSkipVerify: true}
	var d net.Dialer
	if ip := net.ParseIP(host); ip.To4() != nil {
		d.LocalAddr = &net.TCPAddr{IP: tproxy.ProbeSource.AsSlice()}
	}
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true, TLSClientConfig: insecure, DialContext: d.DialContext},
		// A redirect is the probe's answer (the kubelet takes 3xx as a
		// success), not a call to make from 127.0.0.6 elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pair := strings.TrimPrefix(r.URL.RequestURI(), "/probes/")
		if !allowed[pair] {
			http.Error(w, "not a probe of this pod (--app-probes)", http.StatusNotFound)
			return
		}
		if rest, ok := strings.CutPrefix(pair, "grpc:"); ok {
			port, service, _ := strings.Cut(rest, "/")
			grpcProbe(w, r, &d, net.JoinHostPort(host, port), service)
			return
		}
		if port, ok := strings.CutPrefix(pair, "tcp:"); ok {
			c, err := d.DialContext(r.Context(), "tcp", net.JoinHostPort(host, port))
			if err != nil {
				http.Error(w, "probe: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
			c.Close()
			w.Write([]byte("ok\n"))
			return
		}
		scheme := "http"
		if rest, ok := strings.CutPrefix(pair, "https:"); ok {
			scheme, pair = "https", rest
		}
		port, path, _ := strings.Cut(pair, "/")
		req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, scheme+"://"+net.JoinHostPort(host, port)+"/"+path, nil)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		for k, vs := range r.Header {
			if k != "Connection" {
				req.Header[k] = vs
			}
		}
		resp, err := client.Do(req)
		if err != nil {
			http.Error(w, "probe: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		defer resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, io.LimitReader(resp.Body, 10<<10)) // the kubelet reads 10 KiB
	}), nil
}

// grpcProbe answers a probe with a grpc.health.v1 Check of service at addr,
// in plain text as the kubelet's gRPC probe: 200 when SERVING, else 503
// naming the status or the error.
func grpcProbe(w http.ResponseWriter, r *http.Request, d *net.Dialer, addr, service string) {
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) { return d.DialContext(ctx, "tcp", a) }))
	if err != nil {
		http.Error(w, "probe: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	switch {
	case err != nil:
		http.Error(w, "probe: "+err.Error(), http.StatusServiceUnavailable)
	case resp.GetStatus() != healthpb.HealthCheckResponse_SERVING:
		http.Error(w, "probe: "+resp.GetStatus().String(), http.StatusServiceUnavailable)
	default:
		w.Write([]byte("ok\n"))
	}
}
