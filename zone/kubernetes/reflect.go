package kubernetes

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/kube"
)

// change is one thing a reflector saw of its kind: a whole list (synced, at
// start and after a relist) or one object's change.
type change struct {
	kind string
	// list is every object of the kind, when synced.
	synced bool
	list   []json.RawMessage
	// deleted, else added or modified: obj.
	deleted bool
	obj     json.RawMessage
	// rv is the resourceVersion the kind is at once this change is
	// applied: a watch resumed from it misses nothing.
	rv string
}

// reflector lists one kind cluster-wide, then watches it from the list's
// resourceVersion, resuming from the last one seen when a watch ends and
// listing again when the API server no longer has it (410 Gone). What it
// sees it sends on out, in order.
type reflector struct {
	client *kube.Client
	kind   string // for logs and changes: "pods"
	path   string // "/api/v1/pods"
	out    chan<- change
	log    *zap.Logger
	// pageSize bounds one list answer.
	pageSize int
	// resume, when set, is where an earlier run's changes ended: the
	// first watch starts there, without a list.
	resume string
}

// errGone is a watch the API server can no longer serve from its
// resourceVersion: list again.
var errGone = errors.New("resource version too old")

// watchTimeout is how long the API server keeps one watch open; it ends it
// after that and the reflector resumes, so a watch a proxy silently dropped
// does not stay dead.
const watchTimeout = 5 * time.Minute

func (r *reflector) run(ctx context.Context) error {
	backoff := newBackoff()
	resume := r.resume
	for ctx.Err() == nil {
		rv, err := resume, error(nil)
		if resume == "" {
			rv, err = r.list(ctx)
		}
		resume = ""
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			r.log.Warn("cannot list; retrying", zap.String("kind", r.kind), zap.Error(err))
			backoff.wait(ctx)
			continue
		}
		backoff.reset()
		for ctx.Err() == nil {
			next, err := r.watch(ctx, rv)
			if next != "" {
				rv = next
			}
			if errors.Is(err, errGone) {
				r.log.Info("watch too old; listing again", zap.String("kind", r.kind))
				break
			}
			if err != nil && ctx.Err() == nil {
				r.log.Warn("watch failed; resuming", zap.String("kind", r.kind), zap.String("resource_version", rv), zap.Error(err))
				backoff.wait(ctx)
				continue
			}
			if next == "" { // ended at once, with nothing: do not spin
				backoff.wait(ctx)
				continue
			}
			backoff.reset()
		}
	}
	return nil
}

// list sends every object of the kind, page by page, and returns the list's
// resourceVersion.
func (r *reflector) list(ctx context.Context) (string, error) {
	var items []json.RawMessage
	cont := ""
	for {
		q := url.Values{"limit": {fmt.Sprint(r.pageSize)}}
		if cont != "" {
			q.Set("continue", cont)
		}
		var page struct {
			Metadata struct {
				ResourceVersion string `json:"resourceVersion"`
				Continue        string `json:"continue"`
			} `json:"metadata"`
			Items []json.RawMessage `json:"items"`
		}
		// A page that never comes (a connection dropped silently) must
		// not stall the kind for good.
		pctx, cancel := context.WithTimeout(ctx, time.Minute)
		err := r.client.Do(pctx, http.MethodGet, r.path+"?"+q.Encode(), nil, &page)
		cancel()
		if kube.Code(err) == http.StatusGone && cont != "" {
			// The continue token expired: start the list again.
			items, cont = nil, ""
			continue
		}
		if err != nil {
			return "", fmt.Errorf("list %s: %w", r.kind, err)
		}
		items = append(items, page.Items...)
		if page.Metadata.Continue == "" {
			select {
			case r.out <- change{kind: r.kind, synced: true, list: items, rv: page.Metadata.ResourceVersion}:
			case <-ctx.Done():
				return "", ctx.Err()
			}
			return page.Metadata.ResourceVersion, nil
		}
		cont = page.Metadata.Continue
	}
}

// watch sends the changes after rv until the watch ends; it returns the
// last resourceVersion seen, and errGone when rv is too old.
func (r *reflector) watch(ctx context.Context, rv string) (string, error) {
	q := url.Values{"watch": {"1"}, "resourceVersion": {rv}, "allowWatchBookmarks": {"true"},
		"timeoutSeconds": {fmt.Sprint(int(watchTimeout.Seconds()))}}
	// timeoutSeconds ends the watch at the API server; this deadline ends
	// it here too when that end never arrives (a connection dropped
	// silently on the way).
	ctx, cancel := context.WithTimeout(ctx, watchTimeout+time.Minute)
	defer cancel()
	body, err := r.client.Stream(ctx, r.path+"?"+q.Encode())
	if kube.Code(err) == http.StatusGone {
		return "", errGone
	}
	if err != nil {
		return "", fmt.Errorf("watch %s: %w", r.kind, err)
	}
	defer body.Close()
	dec := json.NewDecoder(body)
	last := ""
	for {
		var ev struct {
			Type   string          `json:"type"`
			Object json.RawMessage `json:"object"`
		}
		if err := dec.Decode(&ev); err != nil {
			if errors.Is(err, io.EOF) || ctx.Err() != nil {
				return last, nil
			}
			return last, fmt.Errorf("watch %s: %w", r.kind, err)
		}
		var meta struct {
			Metadata struct {
				ResourceVersion string `json:"resourceVersion"`
			} `json:"metadata"`
			Code    int    `json:"code"`
			Message string `json:"message"`
		}
		if err := json.Unmarshal(ev.Object, &meta); err != nil {
			return last, fmt.Errorf("watch %s: event object: %w", r.kind, err)
		}
		switch ev.Type {
		case "ERROR":
			if meta.Code == http.StatusGone {
				return last, errGone
			}
			return last, fmt.Errorf("watch %s: %d %s", r.kind, meta.Code, meta.Message)
		case "BOOKMARK":
		case "ADDED", "MODIFIED", "DELETED":
			select {
			case r.out <- change{kind: r.kind, deleted: ev.Type == "DELETED", obj: ev.Object, rv: meta.Metadata.ResourceVersion}:
			case <-ctx.Done():
				return last, nil
			}
		default:
			return last, fmt.Errorf("watch %s: unknown event type %q", r.kind, ev.Type)
		}
		if meta.Metadata.ResourceVersion != "" {
			last = meta.Metadata.ResourceVersion
		}
	}
}

// backoff waits 100 ms, doubling to 5 s, between failed attempts.
type backoff struct{ d time.Duration }

func newBackoff() *backoff { return &backoff{d: 100 * time.Millisecond} }

func (b *backoff) wait(ctx context.Context) {
	t := time.NewTimer(b.d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
	b.d = min(2*b.d, 5*time.Second)
}

func (b *backoff) reset() { b.d = 100 * time.Millisecond }
