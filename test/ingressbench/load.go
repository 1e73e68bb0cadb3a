package main

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// target is a proxy under test: a name, its listener and, for CPU
// accounting, the pid of its process (nginx's master: its workers are
// counted as its children).
type target struct {
	name string
	addr string
	pid  int
}

// result is one round against one target.
type result struct {
	Round  int    `json:"round"`
	Target string `json:"target"`
	// Throughput, aggregate over all connections, 10^6 bytes/s.
	TLSMBps float64 `json:"tls_mbps"`
	RawMBps float64 `json:"raw_mbps"`
	// Proxy CPU seconds per 10^9 bytes carried (0 without a pid).
	TLSCPUPerGB float64 `json:"tls_cpu_s_per_gb"`
	RawCPUPerGB float64 `json:"raw_cpu_s_per_gb"`
	// New connections: full TLS handshake through the proxy, one request, close.
	ConnPerSec   float64 `json:"conn_per_s"`
	ConnP50ms    float64 `json:"conn_p50_ms"`
	ConnP99ms    float64 `json:"conn_p99_ms"`
	ConnErrors   int     `json:"conn_errors"`
	CPUmsPer1k   float64 `json:"cpu_ms_per_1k_conns"`
	ConnAccepted int     `json:"conns"`
}

func loadMain(args []string) error {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	targetsFlag := fs.String("targets", "", "NAME=ADDR,... paths to measure; the ratios are the first over the second (a third, such as the backend itself, is a reference)")
	pidsFlag := fs.String("pids", "", "NAME=PID,... for proxy CPU accounting (optional)")
	sni := fs.String("sni", "backend.bench", "server name in every ClientHello")
	rounds := fs.Int("rounds", 3, "rounds; the order of targets alternates round by round")
	conns := fs.Int("conns", 4, "throughput: parallel connections")
	size := fs.Int64("bytes", 256<<20, "throughput: bytes per connection")
	workers := fs.Int("workers", 32, "connection rate: parallel workers")
	duration := fs.Duration("duration", 10*time.Second, "connection rate: duration of each measurement")
	raw := fs.Bool("raw", true, "also measure throughput with a bare TCP payload after the TLS handshake")
	jsonOut := fs.String("json", "", "also write the results as JSON to this file")
	fs.Parse(args)

	targets, err := parseTargets(*targetsFlag, *pidsFlag)
	if err != nil {
		return err
	}
	tcfg := &tls.Config{ServerName: *sni, InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}

	// Warm up: every path once, so first-connection costs stay out of round 1.
	for _, t := range targets {
		if _, err := throughput(t.addr, tcfg, 2, 16<<20, false); err != nil {
			return fmt.Errorf("warm-up against %s: %w", t.name, err)
		}
		connRate(t.addr, tcfg, *workers, time.Second)
	}

	var results []result
	for r := 1; r <= *rounds; r++ {
		order := append([]target(nil), targets...)
		if r%2 == 0 {
			for i, j := 0, len(order)-1; i < j; i, j = i+1, j-1 {
				order[i], order[j] = order[j], order[i]
			}
		}
		byName := map[string]*result{}
		for _, t := range order {
			byName[t.name] = &result{Round: r, Target: t.name}
		}
		// Each kind of measurement runs against every target back to back,
		// so the pairs compared are as close in time as they can be.
		for _, t := range order {
			res := byName[t.name]
			cpu0 := procCPU(t.pid)
			tp, err := throughput(t.addr, tcfg, *conns, *size, false)
			if err != nil {
				return fmt.Errorf("round %d, %s, TLS throughput: %w", r, t.name, err)
			}
			res.TLSMBps = tp.mbps()
			res.TLSCPUPerGB = perGB(procCPU(t.pid)-cpu0, tp.bytes)
			logf("round %d %-6s TLS throughput %8.1f MB/s", r, t.name, res.TLSMBps)
		}
		if *raw {
			for _, t := range order {
				res := byName[t.name]
				cpu0 := procCPU(t.pid)
				tp, err := throughput(t.addr, tcfg, *conns, *size, true)
				if err != nil {
					return fmt.Errorf("round %d, %s, raw throughput: %w", r, t.name, err)
				}
				res.RawMBps = tp.mbps()
				res.RawCPUPerGB = perGB(procCPU(t.pid)-cpu0, tp.bytes)
				logf("round %d %-6s raw throughput %8.1f MB/s", r, t.name, res.RawMBps)
			}
		}
		for _, t := range order {
			res := byName[t.name]
			cpu0 := procCPU(t.pid)
			cr := connRate(t.addr, tcfg, *workers, *duration)
			cpu := procCPU(t.pid) - cpu0
			res.ConnPerSec = cr.rate()
			res.ConnP50ms = ms(percentile(cr.lat, 0.50))
			res.ConnP99ms = ms(percentile(cr.lat, 0.99))
			res.ConnErrors = cr.errors
			res.ConnAccepted = len(cr.lat)
			if len(cr.lat) > 0 && t.pid > 0 {
				res.CPUmsPer1k = cpu * 1000 / float64(len(cr.lat)) * 1000
			}
			logf("round %d %-6s new connections %8.0f /s (p50 %.2f ms, p99 %.2f ms, %d errors)", r, t.name, res.ConnPerSec, res.ConnP50ms, res.ConnP99ms, res.ConnErrors)
		}
		for _, t := range targets {
			results = append(results, *byName[t.name])
		}
	}
	report(os.Stdout, targets, results, *raw)
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(results, "", "  ")
		if err := os.WriteFile(*jsonOut, b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func parseTargets(targets, pids string) ([]target, error) {
	pid := map[string]int{}
	for _, kv := range splitList(pids) {
		name, v, _ := strings.Cut(kv, "=")
		n, err := strconv.Atoi(v)
		if err != nil {
			return nil, fmt.Errorf("-pids %q: %w", kv, err)
		}
		pid[name] = n
	}
	var out []target
	for _, kv := range splitList(targets) {
		name, addr, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("%q is not NAME=ADDR", kv)
		}
		out = append(out, target{name: name, addr: addr, pid: pid[name]})
	}
	if len(out) == 0 {
		return nil, errors.New("no targets")
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

type tput struct {
	bytes   int64
	elapsed time.Duration
}

func (t tput) mbps() float64 { return float64(t.bytes) / t.elapsed.Seconds() / 1e6 }

func perGB(cpuSeconds float64, n int64) float64 {
	if n == 0 {
		return 0
	}
	return cpuSeconds / (float64(n) / 1e9)
}

// throughput opens conns TLS connections through addr at once, asks the
// backend for n bytes on each (inside TLS, or on the bare TCP stream after
// the handshake when raw), and returns the bytes received over the wall
// time from the first dial to the last byte.
func throughput(addr string, cfg *tls.Config, conns int, n int64, raw bool) (tput, error) {
	var wg sync.WaitGroup
	errs := make([]error, conns)
	got := make([]int64, conns)
	start := time.Now()
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], errs[i] = download(addr, cfg, n, raw)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	var total int64
	for i := range conns {
		if errs[i] != nil {
			return tput{}, errs[i]
		}
		if got[i] != n {
			return tput{}, fmt.Errorf("connection %d: got %d bytes, want %d", i, got[i], n)
		}
		total += got[i]
	}
	return tput{bytes: total, elapsed: elapsed}, nil
}

func download(addr string, cfg *tls.Config, n int64, raw bool) (int64, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	tc := tls.Client(c, cfg)
	if err := tc.Handshake(); err != nil {
		return 0, err
	}
	op := "D"
	var src io.Reader = tc
	if raw {
		op, src = "R", c
	}
	if _, err := fmt.Fprintf(tc, "%s %d\n", op, n); err != nil {
		return 0, err
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Minute))
	buf := make([]byte, 256<<10)
	var total int64
	for {
		m, err := src.Read(buf)
		total += int64(m)
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

type rateResult struct {
	lat     []time.Duration
	errors  int
	elapsed time.Duration
}

func (r rateResult) rate() float64 { return float64(len(r.lat)) / r.elapsed.Seconds() }

// connRate runs workers loops for d, each opening a connection through addr,
// completing a full TLS handshake (no session resumption), sending "P",
// reading "pong" until the backend closes, and closing.
func connRate(addr string, cfg *tls.Config, workers int, d time.Duration) rateResult {
	var mu sync.Mutex
	var out rateResult
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var lat []time.Duration
			errs := 0
			for time.Now().Before(deadline) {
				t0 := time.Now()
				if err := ping(addr, cfg, nil); err != nil {
					errs++
					continue
				}
				lat = append(lat, time.Since(t0))
			}
			mu.Lock()
			out.lat = append(out.lat, lat...)
			out.errors += errs
			mu.Unlock()
		}()
	}
	wg.Wait()
	out.elapsed = time.Since(start)
	return out
}

// ping opens one connection to addr (TLS when cfg is set), sends "P" and
// reads the answer until the server closes. firstByte, when set, receives
// the time from before the dial to the first byte of the answer.
func ping(addr string, cfg *tls.Config, firstByte *time.Duration) error {
	t0 := time.Now()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var rw io.ReadWriter = c
	if cfg != nil {
		rw = tls.Client(c, cfg)
	}
	if _, err := rw.Write([]byte("P\n")); err != nil {
		return err
	}
	var buf [16]byte
	n, err := io.ReadAtLeast(rw, buf[:], 1)
	if firstByte != nil {
		*firstByte = time.Since(t0)
	}
	if err != nil {
		return err
	}
	rest, err := io.ReadAll(io.LimitReader(rw, 64))
	if err != nil {
		return err
	}
	if got := append(buf[:n], rest...); !bytes.Equal(got, []byte("pong\n")) {
		return fmt.Errorf("answer %q", got)
	}
	return nil
}

// procCPU returns the user+system CPU seconds of pid and of its children
// (nginx's workers), from /proc; 0 for pid 0.
func procCPU(pid int) float64 {
	if pid <= 0 {
		return 0
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
		if p != pid && ppid != pid {
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += ut + st
	}
	return float64(ticks) / 100 // USER_HZ is 100 on Linux
}

func percentile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[int(q*float64(len(s)-1)+0.5)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// report prints the per-round table, the medians and the ratios of the
// first target to the second, as Markdown.
func report(w io.Writer, targets []target, results []result, raw bool) {
	type col struct {
		head string
		get  func(result) float64
		fmt  string
	}
	cell := func(c col, v float64) string {
		if v == 0 && strings.HasPrefix(c.head, "CPU") {
			return "—" // no pid: a reference path, not a proxy
		}
		return fmt.Sprintf(c.fmt, v)
	}
	cols := []col{
		{"TLS MB/s", func(r result) float64 { return r.TLSMBps }, "%.0f"},
	}
	if raw {
		cols = append(cols, col{"raw MB/s", func(r result) float64 { return r.RawMBps }, "%.0f"})
	}
	cols = append(cols,
		col{"new conn/s", func(r result) float64 { return r.ConnPerSec }, "%.0f"},
		col{"conn p50 ms", func(r result) float64 { return r.ConnP50ms }, "%.2f"},
		col{"conn p99 ms", func(r result) float64 { return r.ConnP99ms }, "%.2f"},
		col{"CPU s/GB TLS", func(r result) float64 { return r.TLSCPUPerGB }, "%.2f"},
	)
	if raw {
		cols = append(cols, col{"CPU s/GB raw", func(r result) float64 { return r.RawCPUPerGB }, "%.2f"})
	}
	cols = append(cols, col{"CPU ms/1k conns", func(r result) float64 { return r.CPUmsPer1k }, "%.0f"})

	row := func(first string, cells []string) {
		fmt.Fprintf(w, "| %s | %s |\n", first, strings.Join(cells, " | "))
	}
	sep := func(n int) {
		fmt.Fprint(w, "|")
		for range n {
			fmt.Fprint(w, " --- |")
		}
		fmt.Fprintln(w)
	}
	heads := []string{"proxy"}
	for _, c := range cols {
		heads = append(heads, c.head)
	}
	heads = append(heads, "conn errors")
	row("round", heads)
	sep(len(heads) + 1)
	for _, r := range results {
		cells := []string{r.Target}
		for _, c := range cols {
			cells = append(cells, cell(c, c.get(r)))
		}
		cells = append(cells, strconv.Itoa(r.ConnErrors))
		row(strconv.Itoa(r.Round), cells)
	}
	fmt.Fprintln(w)

	heads = heads[:len(heads)-1]
	heads[0] = "median of rounds"
	row(heads[0], heads[1:])
	sep(len(heads))
	med := map[string][]float64{}
	for _, t := range targets {
		cells := []string{}
		for _, c := range cols {
			var v []float64
			for _, r := range results {
				if r.Target == t.name {
					v = append(v, c.get(r))
				}
			}
			m := median(v)
			med[t.name] = append(med[t.name], m)
			cells = append(cells, cell(c, m))
		}
		row(t.name, cells)
	}
	if len(targets) >= 2 {
		a, b := targets[0].name, targets[1].name
		cells := []string{}
		for i := range cols {
			if med[b][i] == 0 {
				cells = append(cells, "—")
				continue
			}
			cells = append(cells, fmt.Sprintf("**%.2f×**", med[a][i]/med[b][i]))
		}
		row(a+" / "+b, cells)
		fmt.Fprintln(w)
		// Per-round ratios of the headline figures.
		fmt.Fprintf(w, "Per-round %s / %s:", a, b)
		for _, c := range cols[:3] {
			fmt.Fprintf(w, " %s", c.head)
			for r := 1; ; r++ {
				var va, vb float64
				found := false
				for _, res := range results {
					if res.Round == r {
						found = true
						if res.Target == a {
							va = c.get(res)
						}
						if res.Target == b {
							vb = c.get(res)
						}
					}
				}
				if !found {
					break
				}
				if vb > 0 {
					fmt.Fprintf(w, " %.2f", va/vb)
				}
			}
			fmt.Fprint(w, ";")
		}
		fmt.Fprintln(w)
	}
}
