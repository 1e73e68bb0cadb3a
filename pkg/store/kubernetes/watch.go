package kubernetes

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/api/crd"
	"github.com/ursamesh/ursa/pkg/kube"
	"github.com/ursamesh/ursa/pkg/store"
)

// watchTimeout is how long one watch request lasts before the store opens
// the next from where it left off.
const watchTimeout = 5 * time.Minute

// Revision returns the cluster's current revision: a consistent (quorum)
// read, so nothing written before the call has a greater revision.
func (s *Store) Revision(ctx context.Context) (int64, error) {
	d, _ := api.Lookup("Mesh")
	var page struct {
		Metadata struct {
			ResourceVersion string `json:"resourceVersion"`
		} `json:"metadata"`
	}
	if err := s.do(ctx, http.MethodGet, s.collection(d)+"?limit=1", nil, &page); err != nil {
		return 0, fmt.Errorf("read revision: %w", err)
	}
	return revision(page.Metadata.ResourceVersion)
}

// item is what a kind's watcher passes to Watch's loop: an event or the
// error that ends the watch.
type item struct {
	ev  store.Event
	err error
}

// Watch implements store.Store (see the package doc for what it orders).
func (s *Store) Watch(ctx context.Context, since int64, fn func(store.Event) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	from := map[string]int64{}
	if since == 0 {
		// One cut for every kind: the others list at the first list's
		// revision, so that every change that follows comes after every
		// current object.
		var (
			initial []store.Event
			at      int64
		)
		for _, d := range kinds() {
			var objs []object
			err := s.retry(ctx, "list "+d.Type, func() (err error) {
				objs, at, err = s.listObjectsAt(ctx, d, nil, at)
				return err
			})
			if err != nil {
				return err // names the path; a bare ctx.Err() when ctx ended
			}
			from[d.Type] = at
			for _, o := range objs {
				ev, ok := s.event(store.OpCreate, o.obj)
				if ok {
					initial = append(initial, ev)
				}
			}
		}
		slices.SortFunc(initial, func(a, b store.Event) int { return cmp.Compare(a.Revision, b.Revision) })
		for _, ev := range initial {
			if err := fn(ev); err != nil {
				return err
			}
		}
	} else {
		var now int64
		err := s.retry(ctx, "read the revision", func() (err error) {
			now, err = s.Revision(ctx)
			return err
		})
		if err != nil {
			return err
		}
		if since > now {
			return fmt.Errorf("watch from %d: %w: the cluster is at %d", since, store.ErrCompacted, now)
		}
		for _, d := range kinds() {
			from[d.Type] = since
		}
	}
	items := make(chan item)
	for _, d := range kinds() {
		go s.watchKind(ctx, d, from[d.Type], items)
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case it := <-items:
			if it.err != nil {
				return it.err
			}
			if err := fn(it.ev); err != nil {
				return err
			}
		}
	}
}

// retry calls f until it succeeds, fails with anything but
// store.ErrUnavailable (returned: a missing CRD or a refused permission is
// not waited out), or ctx ends (ctx.Err()). Watch survives an outage and
// never returns ErrUnavailable (store.Store).
func (s *Store) retry(ctx context.Context, what string, f func() error) error {
	backoff := 100 * time.Millisecond
	for {
		err := f()
		if err == nil || !errors.Is(err, store.ErrUnavailable) {
			return err
		}
		s.log.Warn("kubernetes watch: retrying", zap.String("what", what), zap.Error(err))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// event decodes one object of a watch or list; an object the store cannot
// read (written by hand, wrongly) is logged and skipped.
func (s *Store) event(op store.Op, obj crd.Object) (store.Event, bool) {
	r, err := s.decode(obj)
	var rev int64
	if err == nil {
		md, _ := obj["metadata"].(map[string]any)
		rv, _ := md["resourceVersion"].(string)
		rev, err = revision(rv)
	}
	if err != nil {
		s.log.Warn("kubernetes watch: skipping an object the store cannot read", zap.Error(err))
		return store.Event{}, false
	}
	return store.Event{Revision: rev, Op: op, Resource: r}, true
}

// watchKind watches one type from rev, reconnecting after every timeout or
// failure, until ctx ends or the API says rev is gone (ErrCompacted, sent
// to out).
func (s *Store) watchKind(ctx context.Context, d api.Descriptor, rev int64, out chan<- item) {
	send := func(it item) bool {
		select {
		case out <- it:
			return true
		case <-ctx.Done():
			return false
		}
	}
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		next, err := s.watchOnce(ctx, d, rev, send)
		if next > rev {
			rev, backoff = next, 100*time.Millisecond
		}
		if errors.Is(err, store.ErrCompacted) {
			send(item{err: err})
			return
		}
		if err != nil && ctx.Err() == nil {
			s.log.Warn("kubernetes watch: reconnecting", zap.String("type", d.Type), zap.Int64("from", rev), zap.Error(err))
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
		}
	}
}

// watchOnce runs one watch request and returns the last revision it saw.
func (s *Store) watchOnce(ctx context.Context, d api.Descriptor, rev int64, send func(item) bool) (int64, error) {
	q := selector(d)
	q.Set("watch", "1")
	q.Set("resourceVersion", strconv.FormatInt(rev, 10))
	q.Set("allowWatchBookmarks", "true")
	q.Set("timeoutSeconds", strconv.Itoa(int(watchTimeout/time.Second)))
	// The API server ends the watch after timeoutSeconds; this deadline
	// ends it here when that end never arrives.
	ctx, cancel := context.WithTimeout(ctx, watchTimeout+time.Minute)
	defer cancel()
	body, err := s.client.Stream(ctx, s.collection(d)+"?"+q.Encode())
	if kube.Code(err) == http.StatusGone {
		return rev, fmt.Errorf("watch %s from %d: %w", d.Type, rev, store.ErrCompacted)
	}
	if err != nil {
		return rev, fmt.Errorf("watch %s: %w", d.Type, err)
	}
	defer body.Close()
	dec := json.NewDecoder(body)
	for {
		var we struct {
			Type   string     `json:"type"`
			Object crd.Object `json:"object"`
		}
		if err := dec.Decode(&we); err != nil {
			return rev, fmt.Errorf("watch %s: %w", d.Type, err)
		}
		var op store.Op
		switch we.Type {
		case "ADDED":
			op = store.OpCreate
		case "MODIFIED":
			op = store.OpUpdate
		case "DELETED":
			op = store.OpDelete
		case "BOOKMARK":
			md, _ := we.Object["metadata"].(map[string]any)
			rv, _ := md["resourceVersion"].(string)
			if r, err := revision(rv); err == nil && r > rev {
				rev = r
			}
			continue
		case "ERROR":
			// The object is a metav1.Status.
			var st struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			}
			b, _ := json.Marshal(we.Object)
			_ = json.Unmarshal(b, &st)
			if st.Code == http.StatusGone {
				return rev, fmt.Errorf("watch %s from %d: %w: %s", d.Type, rev, store.ErrCompacted, st.Message)
			}
			return rev, fmt.Errorf("watch %s: %d %s", d.Type, st.Code, st.Message)
		default:
			return rev, fmt.Errorf("watch %s: unknown event type %q", d.Type, we.Type)
		}
		setKind(d, we.Object)
		ev, ok := s.event(op, we.Object)
		if !ok {
			continue
		}
		if ev.Revision > rev {
			rev = ev.Revision
		}
		if !send(item{ev: ev}) {
			return rev, ctx.Err()
		}
	}
}
