package proxy

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Draining is how the proxy stops without cutting what is in flight, as an
// Istio or Kuma sidecar's Envoy does on drain_listeners?inboundonly&graceful
// at shutdown. Drain:
//
//   - closes the listeners that take traffic from outside (inbound, the
//     transparent proxy's ursa:inbound, an ingress's): new connections are
//     refused, so callers go to another instance;
//   - asks every open connection to end: an HTTP/1.1 response gets
//     Connection: close and an idle keep-alive connection is closed, an
//     HTTP/2 connection gets GOAWAY; a request in flight finishes, and a TCP
//     connection flows until its peers close it;
//   - keeps the outbound listeners accepting: the application may still be
//     finishing its own calls (Istio drains inbound only). Their HTTP
//     connections end as above, as Envoy's graceful drain ends those of a
//     listener that still accepts, so that the application's idle
//     keep-alive connections do not hold the drain to its time (a new one
//     serves its request, then closes); a new HTTP/2 connection is served
//     to the drain's end;
//   - returns once no downstream connection is left, or, when its context
//     ends (the drain time), closes those left.
//
// The HTTP/1.1 engine pays one atomic load of its connection's flag per
// response and per request for it; nothing else on the request path.

// drainer counts the proxy's downstream connections and asks them to end.
type drainer struct {
	// on is set when the drain begins.
	on atomic.Bool
	mu sync.Mutex
	// conns are the downstream connections open now, accepted to closed.
	conns map[*downstream]struct{}
	// left is signalled when the last connection ends during the drain.
	left chan struct{}
}

// downstream is one accepted connection while it is open.
type downstream struct {
	conn net.Conn
	// inbound: its listener is one Drain closes (drainsListener).
	inbound bool
	mu      sync.Mutex
	asked   bool
	// end, set by the engine serving the connection, ends it gracefully;
	// nil: it runs until its peers end it (a TCP proxy).
	end func()
}

// drainsListener says whether Drain closes listener name: it takes traffic
// from outside the proxy's host (an inbound, ursa:inbound, an ingress).
func drainsListener(name string) bool {
	return directionOf(name) == "inbound" || strings.HasPrefix(name, "ingress")
}

// open counts a connection accepted by listener name. One accepted once the
// drain has begun is asked at once.
func (d *drainer) open(name string, c net.Conn) *downstream {
	ds := &downstream{conn: c, inbound: drainsListener(name)}
	d.mu.Lock()
	// Read under mu: Drain sets on before it lists the connections to ask.
	ds.asked = d.on.Load()
	d.conns[ds] = struct{}{}
	d.mu.Unlock()
	return ds
}

// closed forgets a connection that has ended.
func (d *drainer) closed(ds *downstream) {
	d.mu.Lock()
	delete(d.conns, ds)
	empty := len(d.conns) == 0
	d.mu.Unlock()
	if empty && d.on.Load() {
		select {
		case d.left <- struct{}{}:
		default:
		}
	}
}

// endWith sets how the connection ends gracefully when the drain asks it
// to; when it has asked already, end runs now. A later call replaces an
// earlier one (an HTTP connection is sniffed, then served). end may run on
// another goroutine than the connection's.
func (ds *downstream) endWith(end func()) {
	if ds == nil {
		return
	}
	ds.mu.Lock()
	ds.end = end
	asked := ds.asked
	ds.mu.Unlock()
	if asked {
		end()
	}
}

// ask asks the connection to end gracefully.
func (ds *downstream) ask() {
	ds.mu.Lock()
	ds.asked = true
	end := ds.end
	ds.mu.Unlock()
	if end != nil {
		end()
	}
}

// Draining reports whether Drain has begun.
func (p *Proxy) Draining() bool { return p.drain.on.Load() }

// Drain stops the proxy gracefully (see Draining above) and returns when
// its downstream connections have all ended. When ctx ends first, Drain
// closes those left and returns an error that wraps ctx's cause (its
// deadline, a second signal). From its start,
// Ready is false and Apply opens no listener that drains. Call Close after
// it, as always; Drain is called at most once.
func (p *Proxy) Drain(ctx context.Context) error {
	start := time.Now()
	p.drain.on.Store(true)
	p.mu.Lock()
	var stopped []string
	for name, r := range p.listeners {
		switch {
		case drainsListener(name):
			r.ln.Close() // its entry stays: Apply does not open it again
			stopped = append(stopped, name)
			if r.http != nil {
				r.http.shutdownOnce()
				r.http = nil // a connection accepted before, still in its TLS handshake, gets its own (shut down once it has it)
			}
		case r.http != nil:
			// It goes on accepting: its HTTP/2 connections from now on
			// are a new server's.
			r.http.shutdownOnce()
			r.http = nil
		}
	}
	p.mu.Unlock()
	p.drain.mu.Lock()
	asked := make([]*downstream, 0, len(p.drain.conns))
	for ds := range p.drain.conns {
		asked = append(asked, ds)
	}
	p.drain.mu.Unlock()
	p.log.Info("draining: inbound listeners closed, connections asked to end",
		zap.Strings("closed", stopped), zap.Int("connections", len(asked)))
	for _, ds := range asked {
		ds.ask()
	}
	for {
		p.drain.mu.Lock()
		n := len(p.drain.conns)
		p.drain.mu.Unlock()
		if n == 0 {
			p.log.Info("drained: no connection left", zap.Duration("took", time.Since(start)))
			return nil
		}
		select {
		case <-p.drain.left:
		case <-ctx.Done():
			cut := p.cutConnections()
			p.log.Warn("drain over: connections left closed", zap.Int("closed", cut), zap.Duration("took", time.Since(start)))
			return fmt.Errorf("drain: %d connections still open, closed: %w", cut, context.Cause(ctx))
		}
	}
}

// cutConnections closes every downstream connection still open and says
// how many there were.
func (p *Proxy) cutConnections() int {
	p.drain.mu.Lock()
	conns := make([]net.Conn, 0, len(p.drain.conns))
	for ds := range p.drain.conns {
		conns = append(conns, ds.conn)
	}
	p.drain.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	return len(conns)
}
