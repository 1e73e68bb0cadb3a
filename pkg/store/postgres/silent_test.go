package postgres

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/store/storetest"
)

// blackholeProxy forwards 127.0.0.1 TCP connections to the cluster's unix
// socket; freeze makes every connection open so far drop whatever either
// side sends, without closing (a network path that died silently: a NAT or
// firewall that forgot the flow, a failed-over address), while new
// connections work.
type blackholeProxy struct {
	ln     net.Listener
	sock   string
	mu     sync.Mutex
	frozen []*atomic.Bool
	live   []*atomic.Bool
	conns  []net.Conn
}

func newBlackholeProxy(t *testing.T, dsn string) (*blackholeProxy, string) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &blackholeProxy{ln: ln, sock: fmt.Sprintf("%s/.s.PGSQL.%d", cfg.Host, cfg.Port)}
	go p.serve()
	t.Cleanup(p.close)
	return p, fmt.Sprintf("postgres://postgres@%s/%s?sslmode=disable", ln.Addr(), cfg.Database)
}

func (p *blackholeProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("unix", p.sock)
		if err != nil {
			c.Close()
			continue
		}
		f := &atomic.Bool{}
		p.mu.Lock()
		p.live = append(p.live, f)
		p.conns = append(p.conns, c, u)
		p.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			buf := make([]byte, 32<<10)
			for {
				n, err := src.Read(buf)
				if err != nil {
					if !f.Load() {
						dst.Close()
					}
					return
				}
				if f.Load() {
					continue
				}
				if _, err := dst.Write(buf[:n]); err != nil {
					return
				}
			}
		}
		go pipe(u, c)
		go pipe(c, u)
	}
}

func (p *blackholeProxy) freeze() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, f := range p.live {
		f.Store(true)
	}
	n := len(p.live)
	p.frozen, p.live = append(p.frozen, p.live...), nil
	return n
}

func (p *blackholeProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
}

// TestWatchSurvivesSilentNetworkLoss: the network path to PostgreSQL dies
// silently (packets dropped, nothing closed) while the database stays
// reachable over new connections. A watcher goes on delivering changes, at
// worst after the safety poll (30 s) and a bounded read (liveCheck); it
// waited for good, its listener and its reads on connections that would
// never answer.
func TestWatchSurvivesSilentNetworkLoss(t *testing.T) {
	dsn := newDB(t)
	proxy, viaProxy := newBlackholeProxy(t, dsn)
	direct := open(t, dsn, Options{})
	s := open(t, viaProxy, Options{Log: zaptest.NewLogger(t)})
	t.Cleanup(proxy.close) // before s.Close
	storetest.MustCreate(t, direct, storetest.Mesh("default"))

	got := make(chan store.Event, 100)
	wctx, stop := context.WithCancel(context.Background())
	defer stop()
	go s.Watch(wctx, 0, func(e store.Event) error { got <- e; return nil })
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("no first event")
	}
	time.Sleep(1500 * time.Millisecond) // pooled connections idle
	t.Logf("froze %d connections", proxy.freeze())
	at := time.Now()
	storetest.MustCreate(t, direct, storetest.Route("default", "after-loss", 1, nil))
	select {
	case e := <-got:
		t.Logf("event %d after %s", e.Revision, time.Since(at))
	case <-time.After(45 * time.Second):
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "postgres.(*Store).Watch") || strings.Contains(g, "(*notifier).listen") {
				t.Log(g)
			}
		}
		t.Fatalf("the watcher delivered nothing %s after a write (the store's safety poll is %s); the database was reachable all along over new connections", time.Since(at).Round(time.Second), safetyPoll)
	}
}
