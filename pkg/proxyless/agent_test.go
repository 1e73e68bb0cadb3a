package proxyless

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/mtls"
	"github.com/ursamesh/ursa/pkg/testutil"
	"github.com/ursamesh/ursa/pkg/xds"
)

// TestAgentRotates: against a real xDS server, the agent writes the identity
// the CP publishes for its node, rewrites it when the CP re-issues it (a
// renewal, or a new CA), and rejects (NACKs) one for another key, leaving
// the files as they were.
func TestAgentRotates(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv, err := xds.NewServer(zaptest.NewLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.WaitForHandlers(true))
	srv.Register(ctx, g)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(ln)
	defer g.Stop()

	dir := t.TempDir()
	key, err := LoadOrCreateKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	const node = "default.web-1"
	now := time.Now()
	ca, _ := mtls.NewCA("default", now)
	signer, _ := mtls.SignerFromMeshCA(ca)
	issue := func(s *mtls.Signer, pub any, at time.Time) []byte {
		id, err := s.Issue(mtls.Subject{Mesh: "default", Services: []string{"web"}}, pub, time.Hour, at)
		if err != nil {
			t.Fatal(err)
		}
		return id.CertPEM
	}
	publish := func(chain []byte, root string) {
		if err := srv.SetResources(ctx, node, xds.Secrets(mtls.Identity{CertPEM: chain}, root)); err != nil {
			t.Fatal(err)
		}
	}
	csr, _ := CSR(node, key)
	agent := &Agent{Address: ln.Addr().String(), NodeID: node, Key: key, Dir: dir, Log: zaptest.NewLogger(t),
		Metadata: map[string]string{api.MetadataProxyless: "true", api.MetadataCSR: string(csr)}}
	done := make(chan error, 1)
	go func() { done <- agent.Start(ctx) }()
	defer func() { cancel(); <-done }()

	written := func(f string, want []byte) func() bool {
		return func() bool { b, _ := os.ReadFile(filepath.Join(dir, f)); return bytes.Equal(b, want) }
	}
	first := issue(signer, key.Public(), now)
	publish(first, ca.CertPEM)
	testutil.Until(t, 10*time.Second, "the first identity on disk", written(CertFile, first))
	testutil.Until(t, time.Second, "the root on disk", written(CAFile, []byte(ca.CertPEM)))

	renewed := issue(signer, key.Public(), now.Add(time.Minute))
	publish(renewed, ca.CertPEM)
	testutil.Until(t, 10*time.Second, "the renewed identity on disk", written(CertFile, renewed))

	ca2, _ := mtls.NewCA("default", now)
	signer2, _ := mtls.SignerFromMeshCA(ca2)
	rotated := issue(signer2, key.Public(), now)
	publish(rotated, ca2.CertPEM)
	testutil.Until(t, 10*time.Second, "the identity of the new CA on disk", written(CertFile, rotated))
	testutil.Until(t, time.Second, "the new root on disk", written(CAFile, []byte(ca2.CertPEM)))

	other, _ := LoadOrCreateKey(t.TempDir())
	publish(issue(signer2, other.Public(), now), ca2.CertPEM)
	testutil.Until(t, 10*time.Second, "the NACK of another key's identity", func() bool {
		nodes, _ := srv.Nodes()
		for _, n := range nodes {
			if n.ID == node && n.Nacks > 0 {
				return true
			}
		}
		return false
	})
	if !written(CertFile, rotated)() {
		t.Fatal("a rejected identity replaced the files")
	}
}
