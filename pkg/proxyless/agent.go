package proxyless

import (
	"context"
	"crypto"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v5"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"go.uber.org/zap"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
)

// secretNames are the SDS secrets the agent asks for (the zone CP's
// xds.SecretIdentity and xds.SecretMeshCA).
var secretNames = []string{"identity", "mesh-ca"}

// Agent keeps a proxyless application's workload identity on disk: it
// holds an SDS stream to the zone CP as the application's node (same node
// id and metadata, the CSR of its key included), and writes every
// identity the CP sends (issued, renewed, or re-issued by a rotated zone
// CA) to Dir, where the application's file_watcher certificate provider
// reads it. It reconnects with backoff for as long as it runs.
type Agent struct {
	// Address is host:port of the zone CP's xDS server; TLS verifies it
	// (nil: plaintext, an explicitly insecure setting).
	Address string
	TLS     *tls.Config
	NodeID  string
	// TokenFile holds the dataplane token, read again for every
	// connection.
	TokenFile string
	// Metadata is the node's metadata (the application's bootstrap has
	// the same).
	Metadata map[string]string
	// Key is the key the CSR in Metadata is for (LoadOrCreateKey).
	Key crypto.Signer
	Dir string
	Log *zap.Logger
	// Written, when set, is told of each identity written (its URI SAN
	// and expiry).
	Written func(uri string, notAfter time.Time)
}

// Start runs until ctx ends.
func (a *Agent) Start(ctx context.Context) error {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval = 100*time.Millisecond, 5*time.Second
	for {
		started := time.Now()
		err := a.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(started) > 10*time.Second {
			b.Reset()
		}
		delay := b.NextBackOff()
		a.Log.Warn("lost the zone control plane; reconnecting", zap.Error(err), zap.Duration("retry_in", delay))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
	}
}

func (a *Agent) session(ctx context.Context) error {
	creds := insecure.NewCredentials()
	if a.TLS != nil {
		creds = credentials.NewTLS(a.TLS)
	}
	conn, err := grpc.NewClient(a.Address, grpc.WithTransportCredentials(creds))
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if a.TokenFile != "" {
		b, err := os.ReadFile(a.TokenFile)
		if err != nil {
			return fmt.Errorf("token file: %w", err)
		}
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+strings.TrimSpace(string(b)))
	}
	md := map[string]any{}
	for k, v := range a.Metadata {
		md[k] = v
	}
	meta, err := structpb.NewStruct(md)
	if err != nil {
		return fmt.Errorf("node metadata: %w", err)
	}
	node := &core.Node{Id: a.NodeID, Metadata: meta}
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resource.SecretType, ResourceNames: secretNames}); err != nil {
		return err
	}
	acked := ""
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return errors.New("closed by the control plane")
		}
		if err != nil {
			return err
		}
		applyErr := a.take(resp)
		ack := &discovery.DiscoveryRequest{Node: node, TypeUrl: resp.TypeUrl, ResourceNames: secretNames,
			ResponseNonce: resp.Nonce, VersionInfo: resp.VersionInfo}
		if applyErr != nil {
			a.Log.Warn("cannot use the identity the control plane sent; rejecting it", zap.Error(applyErr))
			ack.VersionInfo = acked
			ack.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: applyErr.Error()}
		} else {
			acked = resp.VersionInfo
		}
		if err := stream.Send(ack); err != nil {
			return err
		}
	}
}

// take writes the identity of a response, if it holds one.
func (a *Agent) take(resp *discovery.DiscoveryResponse) error {
	if resp.TypeUrl != resource.SecretType {
		return fmt.Errorf("type %q: this agent asked for secrets only", resp.TypeUrl)
	}
	var secrets []*tlsv3.Secret
	for _, r := range resp.Resources {
		s := &tlsv3.Secret{}
		if err := r.UnmarshalTo(s); err != nil {
			return fmt.Errorf("secret: %w", err)
		}
		secrets = append(secrets, s)
	}
	id, ok, err := identityOf(secrets, a.Key, time.Now())
	if err != nil || !ok {
		return err
	}
	if err := id.write(a.Dir); err != nil {
		return err
	}
	a.Log.Info("identity written", zap.String("uri", id.uri), zap.Time("not_after", id.notAfter), zap.String("dir", a.Dir))
	if a.Written != nil {
		a.Written(id.uri, id.notAfter)
	}
	return nil
}
