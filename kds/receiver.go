package kds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"go.uber.org/zap"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"

	"github.com/ursamesh/ursa/pkg/api"
)

// RequestStream is the side of a stream that receives resources: the zone's
// GlobalToZone stream, the global's ZoneToGlobal stream.
type RequestStream interface {
	Send(*discovery.DeltaDiscoveryRequest) error
	Recv() (*discovery.DeltaDiscoveryResponse, error)
}

// Target is where a Receiver writes.
type Target interface {
	// Held returns what this side holds of a type, wire name to version,
	// so that the sender sends only what differs.
	Held(ctx context.Context, d api.Descriptor) (map[string]string, error)
	// Apply writes one response in one transaction, or nothing. An error
	// made with Reject NACKs the response; any other ends the stream.
	Apply(ctx context.Context, d api.Descriptor, resources []*discovery.Resource, removed []string) error
}

// rejection marks an error that NACKs a response instead of ending the
// stream: the message was wrong, not the receiver.
type rejection struct{ err error }

func (r *rejection) Error() string { return r.err.Error() }
func (r *rejection) Unwrap() error { return r.err }

// Reject marks err as a reason to NACK.
func Reject(err error) error { return &rejection{err: err} }

// IsRejection reports whether err was made with Reject.
func IsRejection(err error) bool {
	var r *rejection
	return errors.As(err, &r)
}

// Receiver subscribes to its types on a stream and applies, then ACKs, every
// response; a response it cannot apply it NACKs with the reason.
type Receiver struct {
	Types  []api.Descriptor
	Target Target
	// Node identifies this side in its first request.
	Node  *core.Node
	Stats *Stats
	Log   *zap.Logger
	// Refused, optional, is called when the peer sends a type this side
	// did not subscribe to.
	Refused func(err error)
	// Applied, optional, is called after each response is applied.
	Applied func(typeURL string, resp *discovery.DeltaDiscoveryResponse)
}

// Run serves stream until ctx ends, the peer closes it (nil), or it fails.
func (r *Receiver) Run(ctx context.Context, stream RequestStream) error {
	allowed := map[string]api.Descriptor{}
	for i, d := range r.Types {
		held, err := r.Target.Held(ctx, d)
		if err != nil {
			return fmt.Errorf("read held %s: %w", d.Type, err)
		}
		req := &discovery.DeltaDiscoveryRequest{TypeUrl: TypeURL(d.Type), InitialResourceVersions: held}
		if i == 0 {
			req.Node = r.Node
		}
		if err := stream.Send(req); err != nil {
			return fmt.Errorf("subscribe to %s: %w", d.Type, err)
		}
		allowed[TypeURL(d.Type)] = d
	}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		d, ok := allowed[resp.GetTypeUrl()]
		var applyErr error
		if !ok {
			applyErr = Reject(fmt.Errorf("type %q was not subscribed to", resp.GetTypeUrl()))
			if r.Refused != nil {
				r.Refused(applyErr)
			}
		} else {
			applyErr = r.Target.Apply(ctx, d, resp.GetResources(), resp.GetRemovedResources())
		}
		ack := &discovery.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}
		switch {
		case applyErr == nil:
			r.Stats.acked(d.Type, time.Now())
			if r.Applied != nil {
				r.Applied(resp.GetTypeUrl(), resp)
			}
		case IsRejection(applyErr):
			r.Log.Warn("rejected a response", zap.String("type_url", resp.GetTypeUrl()), zap.String("nonce", resp.GetNonce()), zap.Error(applyErr))
			r.Stats.nacked(d.Type, applyErr.Error())
			ack.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: applyErr.Error()}
		default:
			return fmt.Errorf("apply %s: %w", resp.GetTypeUrl(), applyErr)
		}
		if err := stream.Send(ack); err != nil {
			return fmt.Errorf("acknowledge %s: %w", resp.GetTypeUrl(), err)
		}
	}
}
