// Package server is the global side of KDS: it authenticates zones by their
// tokens, sends each zone what it should hold from the global cache, takes
// what each zone owns into the global store, and keeps a ZoneInsight per
// zone.
package server

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/ursamesh/ursa/kds"
	"github.com/ursamesh/ursa/kds/kdspb"
	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/tokens"
)

// Verifier checks a zone token and returns the zone it was issued to.
type Verifier interface {
	VerifyZoneToken(ctx context.Context, token string) (string, error)
}

// Deps is what a Server needs. Every field but Metrics is required.
type Deps struct {
	Store store.Store
	// Cache follows the global store's GlobalToZoneTypes.
	Cache    *kds.Cache
	Verifier Verifier
	Log      *zap.Logger
	Metrics  *kds.Metrics
	// Instance names this global replica in zone insights.
	Instance       string
	MaxMessageSize int
	AckTimeout     time.Duration
	// InsightInterval is how often a connected zone's insight is written.
	InsightInterval time.Duration
}

func (d *Deps) check() error {
	switch {
	case d.Store == nil, d.Cache == nil, d.Verifier == nil, d.Log == nil:
		return errors.New("kds server: Store, Cache, Verifier and Log are required")
	case d.Instance == "":
		return errors.New("kds server: Instance is required")
	}
	if d.MaxMessageSize <= 0 {
		d.MaxMessageSize = 16 << 20
	}
	if d.AckTimeout <= 0 {
		d.AckTimeout = 15 * time.Second
	}
	if d.InsightInterval <= 0 {
		d.InsightInterval = 5 * time.Second
	}
	return nil
}

// Server implements the KDS service at the global.
type Server struct {
	kdspb.UnimplementedKDSServer
	Deps

	// base ends when the server stops, ending every stream with it.
	base context.Context
	stop context.CancelFunc

	mu       sync.Mutex
	sessions map[string]*session
	// recheckPending is set while a recheck of tokens that could not be
	// checked is due.
	recheckPending atomic.Bool
}

// errShuttingDown ends streams when this replica stops.
var errShuttingDown = errors.New("the global control plane is shutting down")

// New returns a Server.
func New(deps Deps) (*Server, error) {
	if err := deps.check(); err != nil {
		return nil, err
	}
	base, stop := context.WithCancel(context.Background())
	return &Server{Deps: deps, sessions: map[string]*session{}, base: base, stop: stop}, nil
}

// Register adds the KDS service to a gRPC server.
func (s *Server) Register(g *grpc.Server) { kdspb.RegisterKDSServer(g, s) }

// ServerOptions are the gRPC options KDS needs: message size limits.
func (s *Server) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.MaxRecvMsgSize(s.MaxMessageSize), grpc.MaxSendMsgSize(s.MaxMessageSize)}
}

// caller is an authenticated zone.
type caller struct {
	zone    string
	token   string
	version string
	expires time.Time // when the token does, if the Verifier tells
}

// authenticate reads the zone's identity from its token, never from what it
// says about itself, and refuses unknown, disabled or misnamed zones.
func (s *Server) authenticate(ctx context.Context) (caller, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	first := func(k string) string {
		if v := md.Get(k); len(v) > 0 {
			return v[0]
		}
		return ""
	}
	token, ok := strings.CutPrefix(first(kds.MetadataAuthorization), "Bearer ")
	if !ok || token == "" {
		return caller{}, status.Error(codes.Unauthenticated, "no zone token: start the zone CP with --zone-token-file (ursactl generate zone-token --zone NAME)")
	}
	zone, expires, err := s.verifyToken(ctx, token)
	if err != nil {
		return caller{}, err
	}
	if claimed := first(kds.MetadataZone); claimed != zone {
		s.Log.Warn("refused a zone CP running under another zone's name", zap.String("zone", zone), zap.String("claimed", claimed))
		return caller{}, status.Errorf(codes.PermissionDenied,
			"this zone CP runs as zone %q but its token was issued to zone %q: start it with --zone %s or use that zone's token", claimed, zone, zone)
	}
	if err := s.admitZone(ctx, zone); err != nil {
		return caller{}, err
	}
	return caller{zone: zone, token: token, version: first(kds.MetadataVersion), expires: expires}, nil
}

// verifyToken returns the zone a token was issued to, and when it expires
// when the Verifier tells (tokens.Issuer does; zero otherwise), or the
// status error to end the stream with: Unavailable when it cannot be
// checked now.
func (s *Server) verifyToken(ctx context.Context, token string) (string, time.Time, error) {
	var (
		zone    string
		expires time.Time
		err     error
	)
	if v, ok := s.Verifier.(interface {
		VerifyZoneTokenClaims(context.Context, string) (tokens.ZoneClaims, error)
	}); ok {
		var c tokens.ZoneClaims
		c, err = v.VerifyZoneTokenClaims(ctx, token)
		zone, expires = c.Zone, c.ExpiresAt
	} else {
		zone, err = s.Verifier.VerifyZoneToken(ctx, token)
	}
	if err != nil && !tokens.IsInvalid(err) {
		// Not a verdict on the token: its keys or its revocation could not
		// be read (the store is down, a deadline passed).
		return "", time.Time{}, status.Errorf(codes.Unavailable, "cannot check the zone token now: %v", err)
	}
	if err != nil {
		s.Log.Warn("refused a zone token", zap.Error(err))
		return "", time.Time{}, status.Errorf(codes.Unauthenticated, "zone token refused: %v", err)
	}
	return zone, expires, nil
}

// admitZone creates the Zone on its first connection and refuses a disabled
// one.
func (s *Server) admitZone(ctx context.Context, zone string) error {
	r, err := s.Store.Get(ctx, api.Key{Type: "Zone", Name: zone})
	if errors.Is(err, store.ErrNotFound) {
		// A zone deleted a moment ago registers again once what it sent
		// before is gone (the global's purge): registered while it was
		// being deleted, its streams would take the rest as held, and
		// never send it again.
		switch left, err := s.holdsZone(ctx, zone); {
		case err != nil:
			return status.Errorf(codes.Unavailable, "read zone %s's resources: %v", zone, err)
		case left:
			return status.Errorf(codes.Unavailable, "zone %q was deleted at the global control plane, which is deleting what it sent; connect again in a moment", zone)
		}
		_, err = s.Store.Create(ctx, &api.Zone{Meta: api.Meta{Type: "Zone", Name: zone}})
		if err == nil || errors.Is(err, store.ErrAlreadyExists) {
			s.Log.Info("zone registered on its first connection", zap.String("zone", zone))
			return nil
		}
	}
	if err != nil {
		return status.Errorf(codes.Unavailable, "read zone %s: %v", zone, err)
	}
	if !r.(*api.Zone).IsEnabled() {
		return status.Errorf(codes.PermissionDenied, "zone %q is disabled at the global control plane", zone)
	}
	return nil
}

// holdsZone says whether the global holds resources zone sent.
func (s *Server) holdsZone(ctx context.Context, zone string) (bool, error) {
	for _, d := range kds.ZoneToGlobalTypes() {
		res, err := s.Store.List(ctx, store.ListOptions{Type: d.Type, Labels: kds.SentBy(zone)})
		if err != nil {
			return false, err
		}
		if len(res.Items) > 0 {
			return true, nil
		}
	}
	return false, nil
}

// stillAdmitted checks again, once a stream is attached (where disabling
// the zone, deleting it or rotating the token key closes it), what
// authenticate decided before: a change that landed in between found no
// stream to close.
func (s *Server) stillAdmitted(ctx context.Context, c caller) error {
	if _, _, err := s.verifyToken(ctx, c.token); err != nil {
		return err
	}
	r, err := s.Store.Get(ctx, api.Key{Type: "Zone", Name: c.zone})
	switch {
	case errors.Is(err, store.ErrNotFound):
		return status.Errorf(codes.PermissionDenied, "zone %q was deleted at the global control plane", c.zone)
	case err != nil:
		return status.Errorf(codes.Unavailable, "read zone %s: %v", c.zone, err)
	case !r.(*api.Zone).IsEnabled():
		return status.Errorf(codes.PermissionDenied, "zone %q is disabled at the global control plane", c.zone)
	}
	return nil
}

// GlobalToZone implements kdspb.KDSServer.
func (s *Server) GlobalToZone(stream kdspb.KDS_GlobalToZoneServer) error {
	c, err := s.authenticate(stream.Context())
	if err != nil {
		return err
	}
	sess, ctx, done := s.attach(stream.Context(), c)
	defer done()
	if err := s.stillAdmitted(ctx, c); err != nil {
		return err
	}
	log := s.Log.With(zap.String("zone", c.zone), zap.String("stream", "global_to_zone"))
	// The zone's sign that the stream is taken (its client's Connected):
	// the first response may be long in coming, or never come when the
	// zone already holds all there is.
	if err := stream.SendHeader(metadata.Pairs(kds.MetadataMaxMessageSize, strconv.Itoa(s.MaxMessageSize))); err != nil {
		return err
	}
	log.Info("zone connected")
	md, _ := metadata.FromIncomingContext(stream.Context())
	sender := &kds.Sender{
		Source: s.Cache, Types: kds.GlobalToZoneTypes(), Peer: c.zone,
		MaxMessageSize: kds.PeerMaxMessageSize(md, s.MaxMessageSize), AckTimeout: s.AckTimeout,
		Stats: sess.toZone, Log: log, Metrics: s.Metrics, Direction: "global_to_zone",
	}
	return s.streamEnd(ctx, log, sender.Run(ctx, stream))
}

// ZoneToGlobal implements kdspb.KDSServer.
func (s *Server) ZoneToGlobal(stream kdspb.KDS_ZoneToGlobalServer) error {
	c, err := s.authenticate(stream.Context())
	if err != nil {
		return err
	}
	sess, ctx, done := s.attach(stream.Context(), c)
	defer done()
	if err := s.stillAdmitted(ctx, c); err != nil {
		return err
	}
	log := s.Log.With(zap.String("zone", c.zone), zap.String("stream", "zone_to_global"))
	// What the zone may send here, before it sends anything.
	if err := stream.SendHeader(metadata.Pairs(kds.MetadataMaxMessageSize, strconv.Itoa(s.MaxMessageSize))); err != nil {
		return err
	}
	target := &zoneTarget{zone: c.zone, store: s.Store, log: log, metrics: s.Metrics}
	receiver := &kds.Receiver{
		Types:   kds.ZoneToGlobalTypes(),
		Target:  target,
		Stats:   sess.fromZone,
		Log:     log,
		Refused: func(err error) { target.violation(err) },
	}
	return s.streamEnd(ctx, log, receiver.Run(ctx, stream))
}

// streamEnd turns why a stream ended into the status the zone sees.
func (s *Server) streamEnd(ctx context.Context, log *zap.Logger, err error) error {
	if cause := context.Cause(ctx); errors.Is(cause, errShuttingDown) {
		return status.Error(codes.Unavailable, cause.Error())
	}
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		log.Info("closing the zone's stream", zap.Error(cause))
		return status.Error(codes.PermissionDenied, cause.Error())
	}
	if err == nil || errors.Is(err, context.Canceled) {
		log.Info("zone disconnected")
		return nil
	}
	log.Warn("zone stream ended", zap.Error(err))
	if errors.Is(err, kds.ErrStalled) {
		return status.Error(codes.Aborted, err.Error())
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codes.Unavailable, err.Error())
}

// Start follows zone, signing-key and token-revocation changes until ctx
// ends, closing the streams of a zone that is disabled or deleted, or whose
// token no longer verifies, and writes insights.
func (s *Server) Start(ctx context.Context) error {
	defer context.AfterFunc(ctx, s.stop)()
	var since int64 = -1
	for _, typ := range []string{"Zone", "GlobalSecret"} {
		res, err := s.Store.List(ctx, store.ListOptions{Type: typ})
		if err != nil {
			return fmt.Errorf("list %s: %w", typ, err)
		}
		if since < 0 || res.Revision < since {
			since = res.Revision
		}
	}
	go s.writeInsights(ctx)
	err := s.Store.Watch(ctx, since, func(e store.Event) error {
		switch e.Resource.GetMeta().Type {
		case "Zone":
			z := e.Resource.(*api.Zone)
			if e.Op == store.OpDelete {
				s.closeZone(z.Name, fmt.Errorf("zone %q was deleted at the global control plane", z.Name))
			} else if !z.IsEnabled() {
				s.closeZone(z.Name, fmt.Errorf("zone %q is disabled at the global control plane", z.Name))
			}
		case "GlobalSecret", "TokenRevocation":
			// A signing key rotated, or one zone token revoked.
			s.recheckTokens(ctx)
		}
		return nil
	})
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// recheckTokens verifies again the token of every open stream, closing
// those refused. A token that cannot be checked now (the store is down)
// keeps its streams, and every token is checked again in recheckRetry:
// a revocation that came meanwhile still ends its streams.
func (s *Server) recheckTokens(ctx context.Context) {
	unchecked := 0
	for _, sess := range s.sessionList() {
		for token := range sess.tokens() {
			_, err := s.Verifier.VerifyZoneToken(ctx, token)
			switch {
			case tokens.IsInvalid(err):
				sess.closeToken(token, fmt.Errorf("zone token no longer valid: %w", err))
			case err != nil:
				unchecked++
				s.Log.Warn("cannot check a zone token again now; its streams stay until it can be", zap.Error(err))
			}
		}
	}
	if unchecked > 0 && ctx.Err() == nil && s.recheckPending.CompareAndSwap(false, true) {
		time.AfterFunc(recheckRetry, func() {
			s.recheckPending.Store(false)
			s.recheckTokens(ctx)
		})
	}
}

// recheckRetry is when tokens that could not be checked again are.
const recheckRetry = 5 * time.Second

func (s *Server) closeZone(zone string, why error) {
	s.mu.Lock()
	sess := s.sessions[zone]
	s.mu.Unlock()
	if sess != nil {
		s.Log.Info("closing a zone's streams", zap.String("zone", zone), zap.Error(why))
		sess.closeAll(why)
	}
}
