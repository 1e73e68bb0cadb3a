package postgres

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/store"
)

// safetyPoll bounds how long a watcher trusts NOTIFY alone: a lost
// notification delays a change by at most this much.
const safetyPoll = 30 * time.Second

// liveCheck bounds a watch's reads, and is how long the listening
// connection may be silent before it is pinged.
const liveCheck = 10 * time.Second

// notifier holds one LISTEN connection per Store and wakes every watcher when
// a change is announced, and after each reconnect, so that watchers re-read
// the change log and miss nothing across an outage.
type notifier struct {
	cfg *pgx.ConnConfig
	log *zap.Logger

	mu      sync.Mutex
	changed chan struct{}
}

func newNotifier(cfg *pgx.ConnConfig, log *zap.Logger) *notifier {
	return &notifier{cfg: cfg, log: log, changed: make(chan struct{})}
}

// wait returns a channel closed at the next wake-up. Take it before reading
// the log, so a change committed during the read is not slept through.
func (n *notifier) wait() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.changed
}

func (n *notifier) wake() {
	n.mu.Lock()
	close(n.changed)
	n.changed = make(chan struct{})
	n.mu.Unlock()
}

func (n *notifier) run(ctx context.Context) {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval = 50*time.Millisecond, 2*time.Second
	for ctx.Err() == nil {
		err := n.listen(ctx, b)
		if ctx.Err() != nil {
			return
		}
		delay := b.NextBackOff()
		n.log.Warn("change listener lost its connection; reconnecting", zap.Error(err), zap.Duration("retry_in", delay))
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
	}
}

func (n *notifier) listen(ctx context.Context, b *backoff.ExponentialBackOff) error {
	conn, err := pgx.ConnectConfig(ctx, n.cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN "+channel); err != nil {
		return err
	}
	b.Reset()
	n.wake() // catch up with whatever was written while we were away
	for {
		// A connection whose network path died without a word (a NAT or
		// firewall that forgot it, a failed-over address) would wait here
		// until the kernel gives up on it, many minutes: check it each
		// liveCheck of silence.
		wctx, cancel := context.WithTimeout(ctx, liveCheck)
		_, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case err == nil:
			n.wake()
			continue
		case ctx.Err() != nil || !pgconn.Timeout(err):
			return err
		}
		pctx, cancel := context.WithTimeout(ctx, liveCheck)
		err = conn.Ping(pctx)
		cancel()
		if err != nil {
			return fmt.Errorf("the listening connection does not answer: %w", err)
		}
	}
}

// Watch implements store.Store by reading the change log from since on, and
// again at every wake-up.
func (s *Store) Watch(ctx context.Context, since int64, fn func(store.Event) error) error {
	const batch = 500
	retry := backoff.NewExponentialBackOff()
	retry.InitialInterval, retry.MaxInterval = 50*time.Millisecond, 2*time.Second
	checked := false
	// last is the digest of the change at since, as delivered ("" before
	// any): the same revision holding another change is another history.
	last := ""
	for {
		wake := s.notifier.wait()
		var (
			events []store.Event
			tag    string
			err    error
		)
		if !checked {
			// A revision beyond the store's, or a change at since other
			// than the one delivered, is from another history (a restored
			// or replaced database, a failover to a standby that lacked
			// the last commits while writes went on): the caller must list
			// again.
			err = s.sameHistory(ctx, since, last)
		}
		if err == nil {
			checked = true
			// Bounded, as every read of a watch: a pooled connection whose
			// path died would hold it until the kernel gives up.
			qctx, cancel := context.WithTimeout(ctx, liveCheck)
			events, tag, err = s.changesSince(qctx, since, batch)
			cancel()
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, store.ErrCompacted) {
				return fmt.Errorf("watch from revision %d: %w", since, err)
			}
			if !errors.Is(err, store.ErrUnavailable) {
				return fmt.Errorf("watch from revision %d: %w", since, err)
			}
			delay := retry.NextBackOff()
			s.log.Warn("watch: cannot read the change log; retrying", zap.Error(err), zap.Duration("retry_in", delay))
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-wake:
			case <-time.After(delay):
			}
			continue
		}
		retry.Reset()
		for _, e := range events {
			if err := fn(e); err != nil {
				return err
			}
			since = e.Revision
		}
		if len(events) > 0 {
			last = tag
		}
		if len(events) == batch {
			continue
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wake:
			checked = false // a reconnect may have brought another database
		case <-time.After(safetyPoll):
		}
	}
}

// sameHistory returns ErrCompacted when since is not a revision of this
// store's history: beyond its revision, or holding a change other than the
// one whose digest is last (when known, and the change is still logged).
func (s *Store) sameHistory(ctx context.Context, since int64, last string) error {
	qctx, cancel := context.WithTimeout(ctx, liveCheck)
	defer cancel()
	var current int64
	if err := s.pool.QueryRow(qctx, `SELECT revision FROM ursa_revision`).Scan(&current); err != nil {
		return classify(err)
	}
	if since > current {
		return fmt.Errorf("watch from revision %d (store at %d): %w", since, current, store.ErrCompacted)
	}
	if last == "" || since == 0 {
		return nil
	}
	var (
		op  int16
		typ string
		doc []byte
	)
	err := s.pool.QueryRow(qctx, `SELECT op, type, document FROM ursa_changes WHERE revision = $1`, since).Scan(&op, &typ, &doc)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil // compacted away: changesSince tells
	case err != nil:
		return classify(err)
	case changeTag(op, typ, doc) != last:
		return fmt.Errorf("watch from revision %d: the store holds another change there (another history): %w", since, store.ErrCompacted)
	}
	return nil
}

// changeTag is a change's digest.
func changeTag(op int16, typ string, doc []byte) string {
	h := sha256.New()
	fmt.Fprintf(h, "%d\x00%s\x00", op, typ)
	h.Write(doc)
	return string(h.Sum(nil))
}

// changesSince reads up to limit changes after since, and the digest of
// the last (changeTag). A gap between since and the first change read
// means the log was compacted past since.
func (s *Store) changesSince(ctx context.Context, since int64, limit int) ([]store.Event, string, error) {
	rows, err := s.pool.Query(ctx, `SELECT revision, op, type, document, more FROM ursa_changes WHERE revision > $1 ORDER BY revision LIMIT $2`, since, limit)
	if err != nil {
		return nil, "", classify(err)
	}
	defer rows.Close()
	var out []store.Event
	var tag string
	for rows.Next() {
		var (
			e   store.Event
			op  int16
			typ string
			doc []byte
		)
		if err := rows.Scan(&e.Revision, &op, &typ, &doc, &e.More); err != nil {
			return nil, "", classify(err)
		}
		if len(out) == 0 && e.Revision != since+1 {
			return nil, "", store.ErrCompacted
		}
		e.Op = store.Op(op)
		if e.Resource, err = store.DecodeStored(typ, doc); err != nil {
			return nil, "", fmt.Errorf("change %d: %w", e.Revision, err)
		}
		out = append(out, e)
		tag = changeTag(op, typ, doc)
	}
	if err := rows.Err(); err != nil {
		return nil, "", classify(err)
	}
	return out, tag, nil
}
