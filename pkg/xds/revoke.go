package xds

import (
	"context"
	"slices"

	"google.golang.org/grpc"
)

// revokeKey keys, in a stream's context, the function that ends it.
type revokeKey struct{}

// revocableRegistrar registers services whose streams the Server can end
// (Server.Revoke) at any moment, not only when a request comes: a proxy
// need not send one.
type revocableRegistrar struct{ grpc.ServiceRegistrar }

func (r revocableRegistrar) RegisterService(desc *grpc.ServiceDesc, impl any) {
	d := *desc
	d.Streams = slices.Clone(desc.Streams)
	for i := range d.Streams {
		handler := d.Streams[i].Handler
		d.Streams[i].Handler = func(srv any, ss grpc.ServerStream) error {
			ctx, cancel := context.WithCancelCause(ss.Context())
			defer cancel(nil)
			err := handler(srv, &revocableStream{ServerStream: ss, ctx: context.WithValue(ctx, revokeKey{}, cancel)})
			if r, ok := context.Cause(ctx).(*refusal); ok {
				return r // the stream's status says why it was ended
			}
			return err
		}
	}
	r.ServiceRegistrar.RegisterService(&d, impl)
}

// revocableStream is a stream whose context its revocation cancels, and
// whose RecvMsg then returns: that ends the xDS server's handling of it,
// which waits on RecvMsg, not on the context.
type revocableStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *revocableStream) Context() context.Context { return s.ctx }

func (s *revocableStream) RecvMsg(m any) error {
	if s.ctx.Err() != nil {
		return context.Cause(s.ctx)
	}
	done := make(chan error, 1)
	// The one RecvMsg in flight after a revocation returns once the
	// handler has, when gRPC ends the stream; m is then nobody's.
	go func() { done <- s.ServerStream.RecvMsg(m) }()
	select {
	case err := <-done:
		return err
	case <-s.ctx.Done():
		return context.Cause(s.ctx)
	}
}
