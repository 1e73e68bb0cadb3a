package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// target is one path to the backend: a name, the address the load goes to,
// and the processes whose CPU it costs (a pair's two proxies; nginx's
// masters, whose workers count as their children).
type target struct {
	name string
	addr string
	pids []int
}

// sample is one measurement: one target at one concurrency in one round.
type sample struct {
	Round      int     `json:"round"`
	Conns      int     `json:"conns"`
	Target     string  `json:"target"`
	Requests   int64   `json:"requests"`
	Errors     int64   `json:"errors"`
	Reconnects int64   `json:"reconnects"`
	Seconds    float64 `json:"seconds"`
	RPS        float64 `json:"rps"`
	MeanMs     float64 `json:"mean_ms"`
	P50Ms      float64 `json:"p50_ms"`
	P90Ms      float64 `json:"p90_ms"`
	P99Ms      float64 `json:"p99_ms"`
	MaxMs      float64 `json:"max_ms"`
	// CPUSeconds is the user+system CPU of the target's processes during
	// the measured window; 0 when it has none (direct).
	CPUSeconds float64 `json:"cpu_s"`
	// CPUmsPer1k is CPUSeconds per 1,000 requests, in ms.
	CPUmsPer1k float64 `json:"cpu_ms_per_1k"`
}

// loadConfig is what one measurement needs besides its target.
type loadConfig struct {
	conns    int
	warmup   time.Duration
	duration time.Duration
	request  []byte
}

func loadMain(args []string) error {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	targetsFlag := fs.String("targets", "", "NAME=ADDR,... the paths to load; the first is the baseline of added latency")
	pidsFlag := fs.String("pids", "", "NAME=PID+PID,... the processes whose CPU a path costs")
	levels := fs.String("conns", "1,32,128", "concurrency levels: keep-alive connections, one request in flight on each")
	rounds := fs.Int("rounds", 3, "rounds; each round runs every level against every target, the targets' order rotating")
	duration := fs.Duration("duration", 10*time.Second, "measured time of each run")
	warmup := fs.Duration("warmup", time.Second, "load before each measured window, on the same connections, not counted")
	host := fs.String("host", "billing", "Host header")
	path := fs.String("path", "/", "request path")
	subject := fs.String("subject", "ursa", "the target compared against -peers")
	peers := fs.String("peers", "nginx,haproxy", "targets -subject is compared against")
	jsonOut := fs.String("json", "", "also write every sample as JSON to this file")
	fs.Parse(args)

	targets, err := parseTargets(*targetsFlag, *pidsFlag)
	if err != nil {
		return err
	}
	var conns []int
	for _, s := range splitList(*levels) {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			return fmt.Errorf("-conns: %q is not a positive number", s)
		}
		conns = append(conns, n)
	}
	req := []byte("GET " + *path + " HTTP/1.1\r\nHost: " + *host + "\r\nUser-Agent: httpbench\r\n\r\n")
	for _, t := range targets {
		if err := probe(t.addr, req); err != nil {
			return fmt.Errorf("%s (%s) does not answer: %w", t.name, t.addr, err)
		}
	}

	var samples []sample
	for r := 1; r <= *rounds; r++ {
		for _, c := range conns {
			for k := range targets {
				t := targets[(k+r-1)%len(targets)]
				s, err := measure(t, loadConfig{conns: c, warmup: *warmup, duration: *duration, request: req})
				if err != nil {
					return fmt.Errorf("round %d, %d conns, %s: %w", r, c, t.name, err)
				}
				s.Round = r
				logf("round %d conns %3d %-8s %8.0f req/s  p50 %.3f ms  p99 %.3f ms  CPU %.0f ms/1k  %d errors",
					r, c, t.name, s.RPS, s.P50Ms, s.P99Ms, s.CPUmsPer1k, s.Errors)
				samples = append(samples, s)
			}
		}
	}
	report(os.Stdout, targets, conns, samples, *subject, splitList(*peers))
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(samples, "", "  ")
		if err := os.WriteFile(*jsonOut, b, 0o644); err != nil {
			return fmt.Errorf("-json: %w", err)
		}
	}
	return nil
}

func parseTargets(targets, pids string) ([]target, error) {
	pidsOf := map[string][]int{}
	for _, kv := range splitList(pids) {
		name, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("-pids: %q is not NAME=PID+PID", kv)
		}
		for _, p := range strings.Split(v, "+") {
			n, err := strconv.Atoi(p)
			if err != nil || n <= 0 {
				return nil, fmt.Errorf("-pids: %q: %q is not a pid", kv, p)
			}
			pidsOf[name] = append(pidsOf[name], n)
		}
	}
	var out []target
	seen := map[string]bool{}
	for _, kv := range splitList(targets) {
		name, addr, ok := strings.Cut(kv, "=")
		if !ok || name == "" || addr == "" {
			return nil, fmt.Errorf("-targets: %q is not NAME=ADDR", kv)
		}
		if seen[name] {
			return nil, fmt.Errorf("-targets: %s twice", name)
		}
		seen[name] = true
		out = append(out, target{name: name, addr: addr, pids: pidsOf[name]})
	}
	if len(out) == 0 {
		return nil, errors.New("-targets: none")
	}
	return out, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "[load] "+format+"\n", a...)
}

// probe sends one request on a new connection and wants a 200.
func probe(addr string, req []byte) error {
	c, err := dial(addr)
	if err != nil {
		return err
	}
	defer c.close()
	c.conn.SetDeadline(time.Now().Add(10 * time.Second))
	return c.do(req)
}

// newHistogram records latencies in ns, to 3 significant digits, from 1 µs
// to 60 s.
func newHistogram() *hdrhistogram.Histogram { return hdrhistogram.New(1000, 60e9, 3) }

// measure runs cfg.conns closed loops against t, each on its own
// keep-alive connection sending its next request when the last answer has
// been read: cfg.warmup first, then cfg.duration measured. Only requests
// sent and answered inside the measured window count; the CPU of t's
// processes is read at the window's two ends.
func measure(t target, cfg loadConfig) (sample, error) {
	s := sample{Conns: cfg.conns, Target: t.name, Seconds: cfg.duration.Seconds()}
	start := time.Now()
	from := start.Add(cfg.warmup)
	until := from.Add(cfg.duration)

	hists := make([]*hdrhistogram.Histogram, cfg.conns)
	var errs, reconnects atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for i := range cfg.conns {
		hists[i] = newHistogram()
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := hists[i]
			var c *client
			defer func() {
				if c != nil {
					c.close()
				}
			}()
			for {
				if c == nil {
					var err error
					if c, err = dial(t.addr); err != nil {
						if time.Now().After(from) {
							errs.Add(1)
							firstErr.CompareAndSwap(nil, err)
						}
						if time.Now().After(until) {
							return
						}
						time.Sleep(10 * time.Millisecond) // a refused dial must not spin
						continue
					}
					c.conn.SetDeadline(until.Add(10 * time.Second))
				}
				t0 := time.Now()
				if !t0.Before(until) {
					return
				}
				err := c.do(cfg.request)
				t1 := time.Now()
				counted := !t0.Before(from) && !t1.After(until)
				if err != nil {
					c.close()
					c = nil
					if !errors.Is(err, errReconnect) {
						if counted {
							errs.Add(1)
							firstErr.CompareAndSwap(nil, err)
						}
						continue
					}
					reconnects.Add(1)
				}
				if counted {
					h.RecordValue(int64(t1.Sub(t0)))
				}
			}
		}()
	}
	time.Sleep(time.Until(from))
	cpu0 := procCPU(t.pids)
	time.Sleep(time.Until(until))
	cpu1 := procCPU(t.pids)
	wg.Wait()

	all := newHistogram()
	for _, h := range hists {
		all.Merge(h)
	}
	s.Requests = all.TotalCount()
	s.Errors, s.Reconnects = errs.Load(), reconnects.Load()
	if s.Requests == 0 {
		err, _ := firstErr.Load().(error)
		return s, fmt.Errorf("no request answered in %v (%d errors, the first: %v)", cfg.duration, s.Errors, err)
	}
	s.RPS = float64(s.Requests) / cfg.duration.Seconds()
	s.MeanMs = all.Mean() / 1e6
	s.P50Ms = nsToMs(all.ValueAtQuantile(50))
	s.P90Ms = nsToMs(all.ValueAtQuantile(90))
	s.P99Ms = nsToMs(all.ValueAtQuantile(99))
	s.MaxMs = nsToMs(all.Max())
	if len(t.pids) > 0 {
		s.CPUSeconds = cpu1 - cpu0
		s.CPUmsPer1k = s.CPUSeconds * 1000 / float64(s.Requests) * 1000
	}
	return s, nil
}

func nsToMs(ns int64) float64 { return float64(ns) / 1e6 }

// errReconnect is a complete 200 answer after which the server closes
// the connection (Connection: close): counted, then a new connection.
var errReconnect = errors.New("server closes the connection")

// client is one keep-alive HTTP/1.1 connection of the load generator.
type client struct {
	conn net.Conn
	br   *bufio.Reader
}

func dial(addr string) (*client, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	return &client{conn: c, br: bufio.NewReaderSize(c, 16<<10)}, nil
}

func (c *client) close() { c.conn.Close() }

// do sends req and reads the whole answer, which must be a 200. It
// returns errReconnect after a 200 that closes the connection.
func (c *client) do(req []byte) error {
	if _, err := c.conn.Write(req); err != nil {
		return err
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	if resp.Close {
		return errReconnect
	}
	return nil
}

// procCPU returns the user+system CPU seconds of pids and of their
// children (nginx's workers), from /proc; 0 for none.
func procCPU(pids []int) float64 {
	if len(pids) == 0 {
		return 0
	}
	want := map[int]bool{}
	for _, p := range pids {
		want[p] = true
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	var ticks int64
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// The command name is in parentheses and may hold spaces: fields
		// count from after its closing parenthesis.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 13 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		if !want[p] && !want[ppid] {
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += ut + st
	}
	return float64(ticks) / 100 // USER_HZ is 100 on Linux
}
