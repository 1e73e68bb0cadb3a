package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"
)

// latencyMain measures, one connection at a time, the time from before the
// dial to the first byte of the backend's answer on each path, interleaving
// the paths sample by sample so that the machine's noise falls on all of
// them alike. The first path is the baseline: the table shows what each
// other path adds to it at each percentile.
func latencyMain(args []string) error {
	fs := flag.NewFlagSet("latency", flag.ExitOnError)
	pathsFlag := fs.String("paths", "", "NAME=ADDR,...; the first is the baseline")
	n := fs.Int("n", 2000, "samples per path")
	warmup := fs.Int("warmup", 200, "samples per path thrown away first")
	useTLS := fs.Bool("tls", false, "handshake TLS with -sni end to end (through an ingress); otherwise plain TCP (into a sidecar)")
	sni := fs.String("sni", "backend.bench", "server name, with -tls")
	title := fs.String("title", "", "caption printed above the table")
	fs.Parse(args)

	paths, err := parseTargets(*pathsFlag, "")
	if err != nil {
		return err
	}
	var cfg *tls.Config
	if *useTLS {
		cfg = &tls.Config{ServerName: *sni, InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}
	}
	lat := make([][]time.Duration, len(paths))
	errs := make([]int, len(paths))
	for i := range *warmup + *n {
		for k := range paths {
			j := (i + k) % len(paths) // rotate which path goes first
			var d time.Duration
			if err := ping(paths[j].addr, cfg, &d); err != nil {
				errs[j]++
				if errs[j] > 10 {
					return fmt.Errorf("%s: %w", paths[j].name, err)
				}
				continue
			}
			if i >= *warmup {
				lat[j] = append(lat[j], d)
			}
		}
	}

	w := os.Stdout
	if *title != "" {
		fmt.Fprintf(w, "%s\n\n", *title)
	}
	qs := []float64{0.50, 0.90, 0.99}
	fmt.Fprintln(w, "| path | samples | mean ms | p50 ms | p90 ms | p99 ms | added p50 ms | added p90 ms | added p99 ms |")
	fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
	base := lat[0]
	for j, p := range paths {
		cells := []string{p.name, fmt.Sprint(len(lat[j])), fmt.Sprintf("%.3f", ms(mean(lat[j])))}
		for _, q := range qs {
			cells = append(cells, fmt.Sprintf("%.3f", ms(percentile(lat[j], q))))
		}
		for _, q := range qs {
			if j == 0 {
				cells = append(cells, "—")
				continue
			}
			cells = append(cells, fmt.Sprintf("**%+.3f**", ms(percentile(lat[j], q)-percentile(base, q))))
		}
		fmt.Fprintf(w, "| %s |\n", strings.Join(cells, " | "))
	}
	fmt.Fprintln(w)
	for j, p := range paths {
		if errs[j] > 0 {
			fmt.Fprintf(w, "%s: %d failed connections (not counted)\n", p.name, errs[j])
		}
	}
	return nil
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
