package proxy

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ursamesh/ursa/pkg/servingcert"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/testutil"
	"github.com/ursamesh/ursa/pkg/xds"
)

func TestParseTarget(t *testing.T) {
	for _, tt := range []struct {
		in        string
		plaintext bool // --xds-insecure
		want      Target
		err       string
	}{
		{in: "grpcs://127.0.0.1:5678", want: Target{Address: "127.0.0.1:5678", Host: "127.0.0.1", TLS: true}},
		{in: "grpcs://cp.zone-1.example:5678", want: Target{Address: "cp.zone-1.example:5678", Host: "cp.zone-1.example", TLS: true}},
		{in: "grpcs://[::1]:5678", want: Target{Address: "[::1]:5678", Host: "::1", TLS: true}},
		{in: "grpcs://cp:5678", plaintext: true, want: Target{Address: "cp:5678", Host: "cp", TLS: true}},
		{in: "grpc://127.0.0.1:5678", plaintext: true, want: Target{Address: "127.0.0.1:5678", Host: "127.0.0.1"}},
		{in: "grpc://127.0.0.1:5678", err: "--xds-insecure"},
		{in: "127.0.0.1:5678", err: "give a scheme"},
		{in: "https://cp:5678", err: `unknown scheme "https"`},
		{in: "grpcs://cp", err: "missing port"},
		{in: "grpcs://:5678", err: "no host"},
		{in: "grpcs://cp:0", err: "not a number from 1 to 65535"},
		{in: "grpcs://cp:99999", err: "not a number from 1 to 65535"},
		{in: "grpcs://cp:http", err: "not a number from 1 to 65535"},
		{in: "grpcs://cp:5678/xds", err: `not "/xds"`},
		{in: "grpcs://user@cp:5678", err: "only HOST:PORT"},
		{in: "grpcs://[fe80::1%eth0]:5678", err: "IPv6 zone"},
		{in: "", err: "give a scheme"},
	} {
		got, err := ParseTarget(tt.in, tt.plaintext)
		switch {
		case tt.err == "" && (err != nil || got != tt.want):
			t.Errorf("%q: %+v %v, want %+v", tt.in, got, err, tt.want)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("%q: %v, want an error saying %q", tt.in, err, tt.err)
		}
	}
}

func TestClientTLSFile(t *testing.T) {
	dir := t.TempDir()
	empty, garbage := filepath.Join(dir, "empty.pem"), filepath.Join(dir, "garbage.pem")
	os.WriteFile(empty, nil, 0o600)
	os.WriteFile(garbage, []byte("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"), 0o600)
	for file, want := range map[string]string{filepath.Join(dir, "none.pem"): "no such file", empty: "holds no PEM certificate", garbage: "holds no PEM certificate"} {
		if _, err := ClientTLS("cp", file); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error saying %q", filepath.Base(file), err, want)
		}
	}
	cfg, err := ClientTLS("cp.example", "")
	if err != nil || cfg.RootCAs != nil || cfg.ServerName != "cp.example" {
		t.Fatalf("without a CA file: %+v %v; want the system roots", cfg, err)
	}
}

// TestClientVerifiesTheCP: over a real TLS xDS server, a Client trusting the
// zone's CA gets its configuration; one trusting another CA logs, as an
// error, that the certificate does not verify, and gets nothing.
func TestClientVerifiesTheCP(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv, err := xds.NewServer(zap.NewNop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := servingcert.Load(ctx, store.NewMemory(0), servingcert.Options{Secret: "xds-server-tls", Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(cert.TLSConfig())))
	srv.Register(ctx, g)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(ln)
	defer g.Stop()
	res := xds.Resources{resource.ClusterType: {&cluster.Cluster{Name: "billing", ConnectTimeout: durationpb.New(time.Second),
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC}}}}
	if err := srv.SetResources(ctx, "default.web-1", res); err != nil {
		t.Fatal(err)
	}
	other, err := servingcert.Load(ctx, store.NewMemory(0), servingcert.Options{Secret: "xds-server-tls", Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	run := func(name string, ca []byte) (*Proxy, *observer.ObservedLogs) {
		file := filepath.Join(dir, name)
		os.WriteFile(file, ca, 0o600)
		tlsCfg, err := ClientTLS("127.0.0.1", file)
		if err != nil {
			t.Fatal(err)
		}
		core, logs := observer.New(zap.InfoLevel)
		p := newProxy(t)
		c := &Client{Address: ln.Addr().String(), TLS: tlsCfg, NodeID: "default.web-1", Proxy: p, Log: zap.New(core)}
		done := make(chan struct{})
		go func() { c.Start(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
		return p, logs
	}
	good, _ := run("right.pem", cert.CAPEM())
	bad, logs := run("wrong.pem", other.CAPEM())
	testutil.Until(t, 10*time.Second, "the configuration over TLS", func() bool { return good.cfg.Load().Clusters["billing"] != nil })
	testutil.Until(t, 10*time.Second, "the verification error, twice", func() bool {
		return logs.FilterLevelExact(zap.ErrorLevel).FilterMessageSnippet("certificate does not verify").Len() >= 2
	})
	if bad.cfg.Load().Clusters["billing"] != nil {
		t.Fatal("a client trusting another CA got configuration")
	}
}

// TestClientTLSResumes: a proxy's second connection to its CP resumes the
// first's TLS session, so a zone whose proxies all reconnect at once does
// not pay a full handshake for each.
func TestClientTLSResumes(t *testing.T) {
	cert, err := servingcert.Load(context.Background(), store.NewMemory(0), servingcert.Options{Secret: "xds-server-tls", Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cert.TLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { // TLS 1.3 sends its tickets after the handshake: read so they go out
				defer c.Close()
				c.Read(make([]byte, 1))
			}()
		}
	}()
	file := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(file, cert.CAPEM(), 0o600)
	cfg, err := ClientTLS("127.0.0.1", file)
	if err != nil {
		t.Fatal(err)
	}
	var resumed []bool
	for range 2 {
		c, err := tls.Dial("tcp", ln.Addr().String(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("x")) // the server reads, the client gets the ticket with its read below
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		c.Read(make([]byte, 1))
		resumed = append(resumed, c.ConnectionState().DidResume)
		c.Close()
	}
	if resumed[0] || !resumed[1] {
		t.Fatalf("resumed: %v; want [false true]", resumed)
	}
}
