// Package client is the zone side of KDS: it dials the global, applies what
// the global sends to the zone's store and sends the zone's own resources up,
// reconnecting with jittered exponential backoff for as long as it runs.
package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"

	"github.com/ursamesh/ursa/kds"
	"github.com/ursamesh/ursa/kds/kdspb"
	"github.com/ursamesh/ursa/pkg/store"
)

// Deps is what a Client needs; Applied and MaxMessageSize are optional.
type Deps struct {
	Zone string
	// Address is host:port of the global's KDS server.
	Address string
	Token   string
	TLS     *tls.Config
	Store   store.Store
	// Cache follows the zone's own resources (ZoneToGlobalTypes).
	Cache          *kds.Cache
	Log            *zap.Logger
	Version        string
	MaxMessageSize int
	AckTimeout     time.Duration
	// Metrics, optional, counts what the zone sends.
	Metrics *kds.Metrics
	// Applied is called after each response from the global is applied.
	Applied func(typeURL string, resp *discovery.DeltaDiscoveryResponse)
}

// Client keeps a zone in sync with the global.
type Client struct {
	Deps
	ToZone    *kds.Stats
	FromZone  *kds.Stats
	connected atomic.Bool
}

// ParseAddress accepts grpcs://host:port or host:port and returns host:port.
func ParseAddress(s string) (string, error) {
	rest := s
	if scheme, r, ok := strings.Cut(s, "://"); ok {
		if scheme != "grpcs" {
			return "", fmt.Errorf("global KDS address %q: KDS runs over TLS; use grpcs://HOST:PORT", s)
		}
		rest = r
	}
	if _, _, err := splitHostPort(rest); err != nil {
		return "", fmt.Errorf("global KDS address %q: %w", s, err)
	}
	return rest, nil
}

// New checks deps and returns a Client.
func New(deps Deps) (*Client, error) {
	switch {
	case deps.Zone == "", deps.Address == "", deps.Token == "", deps.TLS == nil, deps.Store == nil, deps.Cache == nil, deps.Log == nil:
		return nil, errors.New("kds client: Zone, Address, Token, TLS, Store, Cache and Log are required")
	}
	if deps.MaxMessageSize <= 0 {
		deps.MaxMessageSize = 16 << 20
	}
	if deps.AckTimeout <= 0 {
		deps.AckTimeout = 15 * time.Second
	}
	return &Client{Deps: deps, ToZone: kds.NewStats(), FromZone: kds.NewStats()}, nil
}

// Connected reports whether both streams are up: the global has taken
// them (its headers came on each), whether or not it has sent anything
// since. A global sends a type only when it differs from what the zone
// holds, so a first response may never come.
func (c *Client) Connected() bool { return c.connected.Load() }

// Start syncs until ctx ends, reconnecting after every failure.
func (c *Client) Start(ctx context.Context) error {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval, b.RandomizationFactor = 100*time.Millisecond, 10*time.Second, 0.5
	for {
		started := time.Now()
		err := c.session(ctx)
		c.connected.Store(false)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(started) > 10*time.Second {
			b.Reset()
		}
		delay := b.NextBackOff()
		c.Log.Warn("lost the global control plane; reconnecting", zap.Error(err), zap.Duration("retry_in", delay))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
	}
}

func (c *Client) session(ctx context.Context) error {
	conn, err := grpc.NewClient(c.Address,
		grpc.WithTransportCredentials(credentials.NewTLS(c.TLS)),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(c.MaxMessageSize), grpc.MaxCallSendMsgSize(c.MaxMessageSize)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
	)
	if err != nil {
		return fmt.Errorf("dial %s: %w", c.Address, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx,
		kds.MetadataAuthorization, "Bearer "+c.Token,
		kds.MetadataZone, c.Zone,
		kds.MetadataVersion, c.Version,
		kds.MetadataMaxMessageSize, strconv.Itoa(c.MaxMessageSize))
	api := kdspb.NewKDSClient(conn)
	down, err := api.GlobalToZone(ctx)
	if err != nil {
		return fmt.Errorf("open global-to-zone stream: %w", err)
	}
	up, err := api.ZoneToGlobal(ctx)
	if err != nil {
		return fmt.Errorf("open zone-to-global stream: %w", err)
	}
	log := c.Log.With(zap.String("zone", c.Zone))
	// Either stream's end ends the session, and so the other stream (both
	// were opened with ctx): a zone-to-global stream that failed alone
	// would otherwise wait, its zone's changes unsent, until the global
	// next sent something on the other.
	g, gctx := errgroup.WithContext(ctx)
	// Each stream is taken once its headers come (a refusal ends it with
	// none); the session is connected once both are.
	var taken atomic.Int32
	took := func(md metadata.MD) {
		if md != nil && taken.Add(1) == 2 {
			c.connected.Store(true)
		}
	}
	g.Go(func() error {
		// A global of an earlier version sends its headers with its first
		// response: the stream's own errors are the receiver's to report.
		if md, err := down.Header(); err == nil {
			took(md)
		}
		return nil
	})
	g.Go(func() error {
		defer cancel()
		r := &kds.Receiver{
			Types:   kds.GlobalToZoneTypes(),
			Target:  &globalTarget{store: c.Store, log: log, zone: c.Zone, held: map[string]map[string]bool{}},
			Stats:   c.ToZone,
			Log:     log.With(zap.String("stream", "global_to_zone")),
			Applied: c.applied,
		}
		err := r.Run(gctx, down)
		return fmt.Errorf("global-to-zone stream: %w", orEOF(err))
	})
	g.Go(func() error {
		defer cancel()
		// What the global takes, which its first answer's headers say.
		md, err := up.Header()
		if err != nil {
			return fmt.Errorf("zone-to-global stream: %w", err)
		}
		took(md)
		s := &kds.Sender{
			Source: c.Cache, Types: kds.ZoneToGlobalTypes(),
			MaxMessageSize: kds.PeerMaxMessageSize(md, c.MaxMessageSize), AckTimeout: c.AckTimeout,
			Stats: c.FromZone, Log: log.With(zap.String("stream", "zone_to_global")), Direction: "zone_to_global", Metrics: c.Metrics,
		}
		err = s.Run(gctx, up)
		return fmt.Errorf("zone-to-global stream: %w", orEOF(err))
	})
	return g.Wait()
}

func (c *Client) applied(typeURL string, resp *discovery.DeltaDiscoveryResponse) {
	if c.Applied != nil {
		c.Applied(typeURL, resp)
	}
}

func orEOF(err error) error {
	if err == nil {
		return errors.New("closed by the global")
	}
	return err
}
