package xds

import (
	"context"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	lrs "github.com/envoyproxy/go-control-plane/envoy/service/load_stats/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ursamesh/ursa/pkg/api"
)

// An ingress token is checked against ZoneIngresses only: an LRS stream that
// shows one and says its node, a connected sidecar, is an ingress must not
// report loads in that sidecar's name.
func TestLoadReportKindMustBeTheConnectedNodes(t *testing.T) {
	f := startLRS(t, &Auth{
		Verify: func(_ context.Context, token string) (Claims, error) {
			return Claims{Kind: TokenIngress, Zone: "zone-1"}, nil
		},
		AllowUnauthenticated: true,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f.connect(t, ctx, "default.web-1")
	stream, err := lrs.NewLoadReportingServiceClient(f.cc).StreamLoadStats(
		metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer ingress-token"))
	if err != nil {
		t.Fatal(err)
	}
	meta, err := structpb.NewStruct(map[string]any{api.MetadataIngress: "true"})
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&lrs.LoadStatsRequest{Node: &core.Node{Id: "default.web-1", Metadata: meta}}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("an ingress token reporting as sidecar web-1: %v, want PermissionDenied", err)
	}
}
