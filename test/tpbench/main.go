// Command tpbench measures the connection latency the transparent proxy's
// outbound path adds (issue 13): an app's connection to a service's VIP,
// redirected by iptables to the sidecar's original-destination listener
// (ursa:outbound), against the same connection made to an explicit
// outbound listener of the same sidecar. test/tpbench/run.sh sets up the
// hosts (network namespaces), the zone CP and the sidecars, and runs:
//
//	tpbench echo -listen ADDR       the service: answers each connection's
//	                                first line with "pong\n", then closes
//	tpbench latency -paths NAME=ADDR,...  [-unredirected NAME,...]
//	                                one connection at a time, on the client host
//
// The server closes first, so TIME_WAIT lands on the server's side, not on
// the client's ephemeral ports.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/ursamesh/ursa/pkg/proxy/tproxy"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	cmds := map[string]func([]string) error{"echo": echoMain, "latency": latencyMain}
	cmd, ok := cmds[os.Args[1]]
	if !ok {
		usage()
	}
	if err := cmd(os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "tpbench %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: tpbench echo|latency [flags] (see -h of each)")
	os.Exit(2)
}

func echoMain(args []string) error {
	fs := flag.NewFlagSet("echo", flag.ExitOnError)
	addr := fs.String("listen", "0.0.0.0:7070", "TCP address to serve")
	fs.Parse(args)
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := bufio.NewReader(c).ReadString('\n'); err == nil {
					io.WriteString(c, "pong\n")
				}
			}()
		}
	}()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	return ln.Close()
}

type path struct {
	name, addr string
	dialer     net.Dialer
	// connect: dial returned; answer: "pong\n" read, from before the dial.
	connect, answer []time.Duration
	errs            int
	lastErr         error
}

// latencyMain measures, one connection at a time, on each path: the time to
// connect, and the time from before the dial to the whole answer of one
// request. The paths are interleaved sample by sample, in a new random
// order each time, so that the machine's noise falls on all of them alike,
// and so does the work a costly path leaves behind for the next one (a
// fixed rotation always put one path right after the same other). The
// first path is the baseline the others are compared with.
func latencyMain(args []string) error {
	fs := flag.NewFlagSet("latency", flag.ExitOnError)
	pathsFlag := fs.String("paths", "", "NAME=ADDR,...; the first is the baseline")
	unredirected := fs.String("unredirected", "", "NAME,... of paths dialed with the proxy's socket mark, which the redirection lets through")
	n := fs.Int("n", 5000, "samples per path")
	warmup := fs.Int("warmup", 200, "samples per path thrown away first")
	maxErrors := fs.Int("max-errors", 10, "failed connections per path tolerated (reported, not counted) before giving up")
	slow := fs.Duration("slow", 0, "log each sample whose connect takes longer, to stderr (0: none)")
	fs.Parse(args)

	var paths []*path
	for _, kv := range strings.Split(*pathsFlag, ",") {
		name, addr, ok := strings.Cut(kv, "=")
		if !ok || name == "" || addr == "" {
			return fmt.Errorf("-paths: %q is not NAME=ADDR", kv)
		}
		p := &path{name: name, addr: addr, dialer: net.Dialer{Timeout: 5 * time.Second}}
		paths = append(paths, p)
	}
	for _, name := range strings.Split(*unredirected, ",") {
		if name == "" {
			continue
		}
		i := slices.IndexFunc(paths, func(p *path) bool { return p.name == name })
		if i < 0 {
			return fmt.Errorf("-unredirected: no path %q", name)
		}
		paths[i].dialer.Control = tproxy.MarkControl(tproxy.DefaultMark)
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0))
	order := slices.Clone(paths)
	for i := range *warmup + *n {
		rng.Shuffle(len(order), func(a, b int) { order[a], order[b] = order[b], order[a] })
		for _, p := range order {
			connect, answer, err := p.sample()
			if err != nil {
				p.lastErr = err
				if p.errs++; p.errs > *maxErrors {
					return fmt.Errorf("%s: %w", p.name, err)
				}
				continue
			}
			if *slow > 0 && connect > *slow {
				fmt.Fprintf(os.Stderr, "sample %d %s: connect %v answer %v\n", i, p.name, connect, answer)
			}
			if i >= *warmup {
				p.connect = append(p.connect, connect)
				p.answer = append(p.answer, answer)
			}
		}
	}
	report(os.Stdout, paths)
	return nil
}

// sample makes one connection and one request on it.
func (p *path) sample() (connect, answer time.Duration, err error) {
	start := time.Now()
	c, err := p.dialer.Dial("tcp", p.addr)
	if err != nil {
		return 0, 0, err
	}
	connect = time.Since(start)
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		return 0, 0, err
	}
	var buf [5]byte
	if _, err := io.ReadFull(c, buf[:]); err != nil {
		return 0, 0, fmt.Errorf("answer: %w", err)
	}
	answer = time.Since(start)
	if string(buf[:]) != "pong\n" {
		return 0, 0, fmt.Errorf("answer %q, want pong", buf[:])
	}
	// The server closes first; waiting for it keeps TIME_WAIT off this
	// side.
	if n, err := io.Copy(io.Discard, c); err != nil || n != 0 {
		return 0, 0, errors.Join(fmt.Errorf("after the answer: %d more bytes", n), err)
	}
	return connect, answer, nil
}

func report(w io.Writer, paths []*path) {
	fmt.Fprintln(w, "| path | samples | connect p50 ms | connect p99 ms | request p50 ms | request p90 ms | request p99 ms | request mean ms | added p50 ms | p50 ratio |")
	fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
	base := paths[0]
	for _, p := range paths {
		added, ratio := "—", "—"
		if p != base {
			added = fmt.Sprintf("**%+.3f**", ms(percentile(p.answer, 0.5)-percentile(base.answer, 0.5)))
			ratio = fmt.Sprintf("%.2fx", float64(percentile(p.answer, 0.5))/float64(percentile(base.answer, 0.5)))
		}
		fmt.Fprintf(w, "| %s | %d | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f | %s | %s |\n", p.name, len(p.answer),
			ms(percentile(p.connect, 0.5)), ms(percentile(p.connect, 0.99)),
			ms(percentile(p.answer, 0.5)), ms(percentile(p.answer, 0.9)), ms(percentile(p.answer, 0.99)), ms(mean(p.answer)),
			added, ratio)
	}
	for _, p := range paths {
		if p.errs > 0 {
			fmt.Fprintf(w, "\n%s: %d failed connections (not counted), the last: %v\n", p.name, p.errs, p.lastErr)
		}
	}
}

func percentile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[int(q*float64(len(s)-1)+0.5)]
}

func mean(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	var s time.Duration
	for _, x := range d {
		s += x
	}
	return s / time.Duration(len(d))
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
