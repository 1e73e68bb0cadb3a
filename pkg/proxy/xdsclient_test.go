package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ursamesh/ursa/pkg/mtls"
	"github.com/ursamesh/ursa/pkg/xds"
)

// scriptedADS is an ADS server whose nth stream (from 1) pushes the
// responses push(n) gives, each once, and then reports what the proxy
// answers to them; drop ends the stream in progress.
type scriptedADS struct {
	discovery.UnimplementedAggregatedDiscoveryServiceServer
	push    func(n int) []*discovery.DiscoveryResponse
	answers chan adsAnswer

	mu      sync.Mutex
	streams int
	end     chan struct{}
}

// adsAnswer is a request answering a response: an ACK, or a NACK (Reason).
type adsAnswer struct {
	stream  int
	typeURL string
	reason  string
}

func (s *scriptedADS) StreamAggregatedResources(stream discovery.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	s.mu.Lock()
	s.streams++
	n, end := s.streams, make(chan struct{})
	s.end = end
	s.mu.Unlock()
	reqs := make(chan *discovery.DiscoveryRequest)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				close(reqs)
				return
			}
			reqs <- req
		}
	}()
	for i, r := range s.push(n) {
		r.Nonce = strconv.Itoa(n) + "-" + strconv.Itoa(i)
		if err := stream.Send(r); err != nil {
			return err
		}
	}
	for {
		select {
		case <-end:
			return errors.New("dropped by the test")
		case req, ok := <-reqs:
			if !ok {
				return nil
			}
			if req.GetResponseNonce() != "" {
				s.answers <- adsAnswer{stream: n, typeURL: req.GetTypeUrl(), reason: req.GetErrorDetail().GetMessage()}
			}
		}
	}
}

// drop ends the stream in progress.
func (s *scriptedADS) drop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	close(s.end)
}

// TestReconnectKeepsWhatItHad: a proxy whose stream to the CP is lost
// keeps running what it had (its identity, clusters and endpoints, as
// Envoy keeps its configuration across a reconnect): a listener response
// on the new stream that comes before the secrets does not leave the
// proxy without its identity, unable to accept mTLS.
func TestReconnectKeepsWhatItHad(t *testing.T) {
	now := time.Now()
	ca, err := mtls.NewCA("default", now)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(service string) mtls.Identity {
		id, err := mtls.Issue(ca, service, time.Hour, now)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	app := backend(t, "app", nil)
	res := func(typ string, msgs ...proto.Message) *discovery.DiscoveryResponse {
		r := &discovery.DiscoveryResponse{TypeUrl: typ, VersionInfo: "1"}
		for _, m := range msgs {
			a, err := anypb.New(m)
			if err != nil {
				t.Fatal(err)
			}
			r.Resources = append(r.Resources, a)
		}
		return r
	}
	lds := func() *discovery.DiscoveryResponse {
		return res(resource.ListenerType, inboundHTTPListener("inbound:billing", "billing", "app", "spiffe://default/web"))
	}
	ads := &scriptedADS{answers: make(chan adsAnswer, 16), push: func(n int) []*discovery.DiscoveryResponse {
		if n > 1 {
			return []*discovery.DiscoveryResponse{lds()} // and the rest later
		}
		return []*discovery.DiscoveryResponse{lds(), res(resource.ClusterType, staticHTTPCluster("app", false, app)),
			res(resource.SecretType, xds.IdentitySecret(issue("billing")), xds.TrustSecret(ca.CertPEM, ""))}
	}}
	g := grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(g, ads)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(ln)
	defer g.Stop()

	p := newProxy(t)
	ctx, cancel := context.WithCancel(context.Background())
	client := &Client{Address: ln.Addr().String(), NodeID: "default.billing-1", Proxy: p, Log: zaptest.NewLogger(t).Named("client")}
	done := make(chan struct{})
	go func() { client.Start(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	answered := func(stream int, typ string) {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for {
			select {
			case a := <-ads.answers:
				if a.reason != "" {
					t.Fatalf("stream %d: %s rejected: %s", a.stream, a.typeURL, a.reason)
				}
				if a.stream == stream && a.typeURL == typ {
					return
				}
			case <-timeout:
				t.Fatalf("stream %d: no answer to %s", stream, typ)
			}
		}
	}
	answered(1, resource.SecretType)

	web := issue("web")
	pair, err := tls.X509KeyPair(web.CertPEM, web.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	// A new connection per request: each makes a handshake with the
	// proxy's identity as it is then.
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{pair}, InsecureSkipVerify: true}}}
	url := "https://" + boundAddr(t, p, "inbound:billing") + "/"
	call := func(when string) {
		t.Helper()
		resp, err := c.Get(url)
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Header.Get("x-backend") != "app" {
			t.Fatalf("%s: %d from %q", when, resp.StatusCode, resp.Header.Get("x-backend"))
		}
	}
	call("on the first stream")

	ads.drop()
	answered(2, resource.ListenerType)
	call("on the second stream, before its secrets and clusters")
}
