package proxy

import (
	"context"
	"crypto"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
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
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ursamesh/ursa/pkg/proxy/tproxy"
)

// Client keeps a Proxy configured from a zone CP's ADS stream
// (state-of-the-world), reconnecting with backoff for as long as it runs.
type Client struct {
	// Address is host:port of the zone CP's xDS server.
	Address string
	// TLS verifies the server (ClientTLS); nil dials in plaintext, which
	// only an explicitly insecure setting may ask for.
	TLS    *tls.Config
	NodeID string
	Token  string
	// TokenFile, when set, holds the token instead of Token: it is read
	// again for every connection, so a fixed or renewed token is taken up
	// without a restart.
	TokenFile string
	// Metadata goes in the node's metadata (the Dataplane it presents,
	// the CSR for Key).
	Metadata map[string]string
	// Key, when set, is the key this proxy made and sent a CSR for: its
	// identity secret then comes without a key, and must certify this one.
	Key   crypto.Signer
	Proxy *Proxy
	Log   *zap.Logger
	// ReportLoad streams the proxy's upstream connection counts to the
	// CP's Load Reporting Service, on the same connection (sidecars).
	ReportLoad bool

	started time.Time
	// last is what the streams have taken, kept from one to the next;
	// only the session in progress touches it.
	last resources
	// acked is the version of each type last taken, kept from one stream
	// to the next with last.
	acked map[string]string
	// handshake is the last failed TLS handshake's error.
	handshake lastError
	// loadSent is what the last load report covered; only the one
	// reporting goroutine of the current session touches it.
	loadSent struct {
		counts map[loadKey]loadCounts
		at     time.Time
	}
}

// Start runs until ctx ends.
func (c *Client) Start(ctx context.Context) error {
	c.started = time.Now()
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval = 100*time.Millisecond, 5*time.Second
	for {
		started := time.Now()
		err := c.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(started) > 10*time.Second {
			b.Reset()
		}
		delay := b.NextBackOff()
		if v := verifyFailure(c.handshake.take()); v != nil {
			c.Log.Error("the zone control plane's certificate does not verify: it must chain to the CA in --ca-cert-file "+
				"(the zone CP's /xds/ca.pem) and name the host of --cp-address (the zone CP's --xds-tls-san adds names); retrying",
				zap.String("cp", c.Address), zap.Error(v), zap.Duration("retry_in", delay))
		} else if st, ok := grpcstatus.FromError(err); ok && (st.Code() == codes.Unauthenticated || st.Code() == codes.PermissionDenied) {
			c.Log.Error("the zone control plane refused this proxy: "+st.Message(), zap.Stringer("code", st.Code()), zap.Duration("retry_in", delay))
		} else {
			c.Log.Warn("lost the zone control plane; reconnecting", zap.Error(err), zap.Duration("retry_in", delay))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
	}
}

// token returns the token to show, read from TokenFile when set.
func (c *Client) token() (string, error) {
	if c.TokenFile == "" {
		return c.Token, nil
	}
	b, err := os.ReadFile(c.TokenFile)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// state is what the stream has received, by type.
type state struct {
	resources
	names  map[string][]string // subscribed names of EDS, SDS and RDS
	acked  map[string]string   // last applied version, by type
	nonces map[string]string   // the stream's last response's nonce, by type
}

// resources are the last taken of each type.
type resources struct {
	listeners []*listener.Listener
	clusters  []*cluster.Cluster
	cla       map[string]*endpoint.ClusterLoadAssignment
	secrets   map[string]*tlsv3.Secret
	routes    map[string]*route.RouteConfiguration
}

func (c *Client) session(ctx context.Context) error {
	creds := insecure.NewCredentials()
	if c.TLS != nil {
		creds = handshakes{TransportCredentials: credentials.NewTLS(c.TLS), last: &c.handshake}
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	target := c.Address
	if mark := c.Proxy.Mark; mark != 0 {
		// The transparent proxy must not redirect the proxy's own
		// connection to its CP, nor its lookup of the CP's name: that
		// would reach this proxy's resolver, which has no configuration
		// before the CP is reached. grpc's own resolver cannot mark its
		// sockets, so the name goes to the dialer unresolved.
		d := &net.Dialer{Control: tproxy.MarkControl(mark), Resolver: markedResolver(mark)}
		opts = append(opts, grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", addr)
		}))
		target = "passthrough:///" + c.Address
	}
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return err
	}
	defer conn.Close()
	var reporting sync.WaitGroup
	defer reporting.Wait() // after cancel, below
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	token, err := c.token()
	if err != nil {
		return err
	}
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	md := map[string]any{}
	for k, v := range c.Metadata {
		md[k] = v
	}
	meta, err := structpb.NewStruct(md)
	if err != nil {
		return err
	}
	node := &core.Node{Id: c.NodeID, Metadata: meta}
	// What the last stream gave stays until this one replaces it, type by
	// type, as Envoy keeps its configuration across a reconnect: a
	// listener response that comes before the secrets must not leave the
	// proxy without its identity. So do the versions it accepted, which
	// the new stream's requests carry (Envoy clears only the nonces).
	// Subscriptions are the stream's own: the names it had are asked for
	// at once.
	st := &state{resources: c.last, names: map[string][]string{}, acked: maps.Clone(c.acked), nonces: map[string]string{}}
	if st.acked == nil {
		st.acked = map[string]string{}
	}
	defer func() { c.last, c.acked = st.resources, st.acked }()
	reportingStarted := false
	for _, typ := range []string{resource.ListenerType, resource.ClusterType} {
		if err := stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: typ, VersionInfo: st.acked[typ]}); err != nil {
			return err
		}
	}
	if err := st.subscribe(stream, node); err != nil {
		return err
	}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return errors.New("closed by the control plane")
		}
		if err != nil {
			return err
		}
		if c.ReportLoad && !reportingStarted {
			// The CP admits load reports of proxies it serves: start once
			// it has answered.
			reportingStarted = true
			reporting.Go(func() { c.reportLoad(ctx, conn, node) })
		}
		// The server takes a request of a type only with the nonce of its
		// last response of that type: every request carries it.
		st.nonces[resp.TypeUrl] = resp.Nonce
		if !st.subscribed(resp.TypeUrl) {
			// As Envoy (GrpcMuxImpl::onDiscoveryResponse): a response of a
			// type let go is answered with what the stream asks for now
			// (nothing) when it holds anything, so that the server's view
			// of the subscription catches up; one of a type never asked
			// for is ignored.
			c.Log.Debug("ignoring a response of a type not subscribed to", zap.String("type_url", resp.TypeUrl))
			if takes(resp.TypeUrl) && len(resp.Resources) > 0 {
				if err := stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resp.TypeUrl, ResponseNonce: resp.Nonce, VersionInfo: st.acked[resp.TypeUrl]}); err != nil {
					return err
				}
			}
			continue
		}
		// A response refused whole leaves what was taken before, as
		// Envoy keeps its last good configuration of a type: the next
		// response of another type (a failover's endpoints) is judged
		// with that, not refused again for this one's sake. (take
		// replaces what it changes, never changing it in place.)
		kept := st.resources
		applyErr := st.take(resp)
		if applyErr == nil {
			var cfg *Config
			if cfg, applyErr = translate(st.listeners, st.clusters, sortedValues(st.cla), sortedValues(st.secrets), c.Key, sortedValues(st.routes)...); applyErr == nil {
				// Apply leaves out only what it could not open, and
				// applies the rest: what it was given stays taken.
				applyErr = c.Proxy.Apply(cfg)
			} else {
				st.resources = kept
			}
		} else {
			st.resources = kept
		}
		ack := &discovery.DiscoveryRequest{Node: node, TypeUrl: resp.TypeUrl, ResponseNonce: resp.Nonce,
			ResourceNames: st.names[resp.TypeUrl], VersionInfo: resp.VersionInfo}
		if applyErr != nil {
			c.Log.Warn("cannot apply configuration; rejecting it", zap.String("type_url", resp.TypeUrl), zap.Error(applyErr))
			ack.VersionInfo = st.acked[resp.TypeUrl]
			ack.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: applyErr.Error()}
		} else {
			st.acked[resp.TypeUrl] = resp.VersionInfo
		}
		if err := stream.Send(ack); err != nil {
			return err
		}
		if err := st.subscribe(stream, node); err != nil {
			return err
		}
	}
}

// subscribe asks for the endpoints, secrets and route configurations the
// configuration needs, where they are not what the stream asked for, and
// lets go of a type no longer needed with a request naming none (as
// Envoy's last watch of a type going). What is no longer asked for is
// dropped.
func (st *state) subscribe(stream discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient, node *core.Node) error {
	wanted := st.wanted()
	for _, typ := range []string{resource.EndpointType, resource.SecretType, resource.RouteType} {
		names, had := wanted[typ], st.names[typ]
		if slices.Equal(names, had) {
			continue
		}
		st.forget(typ, names)
		if len(names) == 0 {
			delete(st.names, typ)
		} else {
			st.names[typ] = names
		}
		if err := stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: typ, ResourceNames: names, VersionInfo: st.acked[typ],
			ResponseNonce: st.nonces[typ]}); err != nil {
			return err
		}
	}
	return nil
}

// takes says whether typ is one the proxy takes.
func takes(typ string) bool {
	switch typ {
	case resource.ListenerType, resource.ClusterType, resource.EndpointType, resource.SecretType, resource.RouteType:
		return true
	}
	return false
}

// subscribed says whether the stream asks for typ: listeners and clusters
// always, the others while it names some.
func (st *state) subscribed(typ string) bool {
	if typ == resource.ListenerType || typ == resource.ClusterType {
		return true
	}
	return len(st.names[typ]) > 0
}

// take stores a response's resources. Listener and cluster responses hold
// every resource of their type (the state of the world); endpoint, secret
// and route configuration responses need hold only what changed, the rest
// staying as it was, and what the stream did not ask for in them is
// ignored (the xDS protocol's rules, as Envoy runs them). A response
// naming a resource twice is refused, as is a resource with a field this
// build's API does not know (knownFields).
func (st *state) take(resp *discovery.DiscoveryResponse) (err error) {
	names := st.names[resp.TypeUrl]
	switch resp.TypeUrl {
	case resource.ListenerType:
		st.listeners, err = unpack(resp, "listener", (*listener.Listener).GetName, nil)
	case resource.ClusterType:
		st.clusters, err = unpack(resp, "cluster", (*cluster.Cluster).GetName, nil)
	case resource.EndpointType:
		st.cla, err = merge(st.cla, resp, "load assignment", (*endpoint.ClusterLoadAssignment).GetClusterName, names)
	case resource.SecretType:
		st.secrets, err = merge(st.secrets, resp, "secret", (*tlsv3.Secret).GetName, names)
	case resource.RouteType:
		st.routes, err = merge(st.routes, resp, "route configuration", (*route.RouteConfiguration).GetName, names)
	default:
		return fmt.Errorf("type %q is not supported by the built-in proxy", resp.TypeUrl)
	}
	return err
}

// forget drops what the stream no longer asks for of typ (names, sorted).
func (st *state) forget(typ string, names []string) {
	keep := func(name string) bool { _, ok := slices.BinarySearch(names, name); return ok }
	switch typ {
	case resource.EndpointType:
		st.cla = only(st.cla, keep)
	case resource.SecretType:
		st.secrets = only(st.secrets, keep)
	case resource.RouteType:
		st.routes = only(st.routes, keep)
	}
}

// unpack reads a response's resources as Ts (kind, named by name), those
// keep takes (nil: all) and no others: what it leaves is not judged.
func unpack[T any, PT interface {
	*T
	proto.Message
}](resp *discovery.DiscoveryResponse, kind string, name func(PT) string, keep func(string) bool) ([]PT, error) {
	out := make([]PT, 0, len(resp.Resources))
	seen := make(map[string]bool, len(resp.Resources))
	for i, a := range resp.Resources {
		r := PT(new(T))
		if err := a.UnmarshalTo(r); err != nil {
			return nil, fmt.Errorf("%s %d of the response (%s): %w", kind, i, a.GetTypeUrl(), err)
		}
		n := name(r)
		if keep != nil && !keep(n) {
			continue
		}
		if err := knownFields(r); err != nil {
			return nil, fmt.Errorf("%s %q: %w", kind, n, err)
		}
		if seen[n] {
			return nil, fmt.Errorf("%s %q: named twice in one response", kind, n)
		}
		seen[n] = true
		out = append(out, r)
	}
	return out, nil
}

// merge is have with a response's resources of the names asked for
// (asked, sorted) put in: a new map, have unchanged. The others are
// ignored, unjudged.
func merge[T any, PT interface {
	*T
	proto.Message
}](have map[string]PT, resp *discovery.DiscoveryResponse, kind string, name func(PT) string, asked []string) (map[string]PT, error) {
	got, err := unpack(resp, kind, name, func(n string) bool { _, ok := slices.BinarySearch(asked, n); return ok })
	if err != nil {
		return nil, err
	}
	out := make(map[string]PT, len(have)+len(got))
	maps.Copy(out, have)
	for _, r := range got {
		out[name(r)] = r
	}
	return out, nil
}

// only is m without the entries keep refuses: m itself when it keeps all.
func only[T any](m map[string]T, keep func(string) bool) map[string]T {
	for k := range m {
		if !keep(k) {
			out := maps.Clone(m)
			maps.DeleteFunc(out, func(k string, _ T) bool { return !keep(k) })
			return out
		}
	}
	return m
}

// sortedValues is m's values in the order of their names.
func sortedValues[T any](m map[string]T) []T {
	out := make([]T, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, m[k])
	}
	return out
}

// wanted lists the EDS, SDS and RDS names the current clusters and
// listeners refer to: SDS names are read from their TLS contexts, RDS
// names from their HTTP connection managers.
func (st *state) wanted() map[string][]string {
	eds, sds, rds := map[string]bool{}, map[string]bool{}, map[string]bool{}
	addSDS := func(ctx *tlsv3.CommonTlsContext) {
		for _, c := range ctx.GetTlsCertificateSdsSecretConfigs() {
			sds[c.GetName()] = true
		}
		if c := ctx.GetValidationContextSdsSecretConfig(); c != nil {
			sds[c.GetName()] = true
		}
		if c := ctx.GetCombinedValidationContext().GetValidationContextSdsSecretConfig(); c != nil {
			sds[c.GetName()] = true
		}
	}
	for _, cl := range st.clusters {
		if cl.GetType() == cluster.Cluster_EDS {
			name := cl.GetEdsClusterConfig().GetServiceName()
			if name == "" {
				name = cl.Name
			}
			eds[name] = true
		}
		up := &tlsv3.UpstreamTlsContext{}
		if ts := cl.GetTransportSocket(); ts != nil && ts.GetTypedConfig().UnmarshalTo(up) == nil {
			addSDS(up.GetCommonTlsContext())
		}
	}
	for _, l := range st.listeners {
		chains := l.GetFilterChains()
		if d := l.GetDefaultFilterChain(); d != nil {
			chains = append(chains[:len(chains):len(chains)], d)
		}
		for _, fc := range chains {
			down := &tlsv3.DownstreamTlsContext{}
			if ts := fc.GetTransportSocket(); ts != nil && ts.GetTypedConfig().UnmarshalTo(down) == nil {
				addSDS(down.GetCommonTlsContext())
			}
			for _, f := range fc.GetFilters() {
				h := &hcm.HttpConnectionManager{}
				if f.GetTypedConfig().MessageIs(h) && f.GetTypedConfig().UnmarshalTo(h) == nil && h.GetRds().GetRouteConfigName() != "" {
					rds[h.GetRds().GetRouteConfigName()] = true
				}
			}
		}
	}
	delete(sds, "")
	out := map[string][]string{}
	if len(eds) > 0 {
		out[resource.EndpointType] = slices.Sorted(maps.Keys(eds))
	}
	if len(sds) > 0 {
		out[resource.SecretType] = slices.Sorted(maps.Keys(sds))
	}
	if len(rds) > 0 {
		out[resource.RouteType] = slices.Sorted(maps.Keys(rds))
	}
	return out
}
