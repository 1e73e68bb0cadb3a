// Command grpcxds is the proxyless gRPC server of the end-to-end tests: a
// grpc-go xDS server (xds.NewGRPCServer with xDS credentials) that takes
// its listener, mTLS and RBAC from the zone CP through the bootstrap
// GRPC_XDS_BOOTSTRAP names (ursa-dp proxyless writes it), serving
// grpc.testing.TestService:
//
//   - UnaryCall answers with ServerId = --name and Hostname = the URI SANs
//     of the caller's certificate (none without mTLS);
//   - with --fail-every N, every Nth call fails UNAVAILABLE;
//   - metadata "x-delay: <duration>" delays the answer (or until the
//     caller gives up).
//
// It logs "serving" once the CP's listener has it serving.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/xds"
)

type server struct {
	testgrpc.UnimplementedTestServiceServer
	name      string
	failEvery int64
	calls     atomic.Int64
}

func (s *server) UnaryCall(ctx context.Context, _ *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	n := s.calls.Add(1)
	if s.failEvery > 0 && n%s.failEvery == 0 {
		return nil, status.Errorf(codes.Unavailable, "%s: call %d fails on purpose", s.name, n)
	}
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("x-delay"); len(v) > 0 {
		d, err := time.ParseDuration(v[0])
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "x-delay: %v", err)
		}
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return &testgrpc.SimpleResponse{ServerId: s.name, Hostname: strings.Join(peerURIs(ctx), ",")}, nil
}

// peerURIs are the URI SANs of the caller's certificate.
func peerURIs(ctx context.Context) []string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return nil
	}
	var out []string
	for _, u := range info.State.PeerCertificates[0].URIs {
		out = append(out, u.String())
	}
	return out
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "address to serve on (its Dataplane's address and inbound port)")
	name := flag.String("name", "grpcxds", "what UnaryCall answers as ServerId")
	failEvery := flag.Int64("fail-every", 0, "fail every Nth call with UNAVAILABLE (0: never)")
	flag.Parse()
	creds, err := xdscreds.NewServerCredentials(xdscreds.ServerOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		log.Fatal(err)
	}
	srv, err := xds.NewGRPCServer(grpc.Creds(creds), xds.ServingModeCallback(func(addr net.Addr, args xds.ServingModeChangeArgs) {
		if args.Mode == connectivity.ServingModeServing {
			fmt.Printf("serving %s\n", addr)
		} else {
			fmt.Printf("not serving %s: %v\n", addr, args.Err)
		}
	}))
	if err != nil {
		log.Fatal(err)
	}
	testgrpc.RegisterTestServiceServer(srv, &server{name: *name, failEvery: *failEvery})
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(srv.Serve(ln))
}
