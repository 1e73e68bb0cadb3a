package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
)

// Goals of issue 15: the built-in proxy's pair against a peer pair.
const (
	goalRPS   = 0.8 // at least this times the peer's requests/s
	goalAdded = 1.2 // at most this times the peer's added p50 and p99
)

// summary is one target at one level, medians over the rounds.
type summary struct {
	rps, p50, p99, added50, added99, cpu, cores float64
	errors, reconnects                          int64
	rounds                                      int
}

func summarize(targets []target, level int, samples []sample) map[string]summary {
	base := targets[0].name
	baseOf := map[int]sample{}
	for _, s := range samples {
		if s.Conns == level && s.Target == base {
			baseOf[s.Round] = s
		}
	}
	out := map[string]summary{}
	for _, t := range targets {
		var rps, p50, p99, a50, a99, cpu, cores []float64
		var sum summary
		for _, s := range samples {
			if s.Conns != level || s.Target != t.name {
				continue
			}
			b := baseOf[s.Round]
			rps, p50, p99 = append(rps, s.RPS), append(p50, s.P50Ms), append(p99, s.P99Ms)
			a50, a99 = append(a50, s.P50Ms-b.P50Ms), append(a99, s.P99Ms-b.P99Ms)
			cpu, cores = append(cpu, s.CPUmsPer1k), append(cores, s.CPUSeconds/s.Seconds)
			sum.errors += s.Errors
			sum.reconnects += s.Reconnects
			sum.rounds++
		}
		sum.rps, sum.p50, sum.p99 = median(rps), median(p50), median(p99)
		sum.added50, sum.added99 = median(a50), median(a99)
		sum.cpu, sum.cores = median(cpu), median(cores)
		out[t.name] = sum
	}
	return out
}

// report prints, per concurrency level, the medians of the rounds, the
// subject's ratios to each peer and whether they meet the goals; then
// every sample. Markdown.
func report(w io.Writer, targets []target, levels []int, samples []sample, subject string, peers []string) {
	base := targets[0].name
	has := map[string]bool{}
	for _, t := range targets {
		has[t.name] = true
	}
	rounds := 0
	for _, s := range samples {
		rounds = max(rounds, s.Round)
	}
	for _, level := range levels {
		sum := summarize(targets, level, samples)
		fmt.Fprintf(w, "#### %d connection%s (median of %d rounds)\n\n", level, plural(level), rounds)
		fmt.Fprintln(w, "| path | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | proxies' CPU ms / 1k req | proxies' CPU cores | errors |")
		fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
		for _, t := range targets {
			s := sum[t.name]
			added50, added99, cpu, cores := "—", "—", "—", "—"
			if t.name != base {
				added50, added99 = fmt.Sprintf("%+.3f", s.added50), fmt.Sprintf("%+.3f", s.added99)
			}
			if len(t.pids) > 0 {
				cpu, cores = fmt.Sprintf("%.0f", s.cpu), fmt.Sprintf("%.2f", s.cores)
			}
			fmt.Fprintf(w, "| %s | %.0f | %.3f | %.3f | %s | %s | %s | %s | %d |\n",
				t.name, s.rps, s.p50, s.p99, added50, added99, cpu, cores, s.errors)
		}
		if !has[subject] {
			fmt.Fprintln(w)
			continue
		}
		var verdicts []string
		for _, p := range peers {
			if !has[p] || p == subject {
				continue
			}
			a, b := sum[subject], sum[p]
			r := a.rps / b.rps
			r50, r99 := ratio(a.added50, b.added50), ratio(a.added99, b.added99)
			fmt.Fprintf(w, "| %s / %s | **%.2f×** | %.2f× | %.2f× | **%s** | **%s** | %s | %s | |\n",
				subject, p, r, a.p50/b.p50, a.p99/b.p99, fmtRatio(r50), fmtRatio(r99), fmtRatio(ratio(a.cpu, b.cpu)), fmtRatio(ratio(a.cores, b.cores)))
			// An added latency at or under the baseline's meets any goal; over
			// it, against a peer at or under it, none.
			met := r >= goalRPS &&
				(a.added50 <= 0 || a.added50 <= goalAdded*b.added50) &&
				(a.added99 <= 0 || a.added99 <= goalAdded*b.added99)
			v := "met"
			if !met {
				v = "**not met**"
			}
			verdicts = append(verdicts, fmt.Sprintf("against %s %s (%.2f× req/s, %s added p50, %s added p99)", p, v, r, fmtRatio(r50), fmtRatio(r99)))
		}
		fmt.Fprintln(w)
		if len(verdicts) > 0 {
			fmt.Fprintf(w, "Goal (≥ %.1f× req/s, ≤ %.1f× added p50 and p99): %s %s.\n\n", goalRPS, goalAdded, subject, strings.Join(verdicts, "; "))
		}
	}

	fmt.Fprintln(w, "Every sample:")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| round | conns | path | req/s | mean ms | p50 ms | p90 ms | p99 ms | max ms | proxies' CPU ms / 1k req | errors | reconnects |")
	fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
	sorted := append([]sample(nil), samples...)
	order := map[string]int{}
	for i, t := range targets {
		order[t.name] = i
	}
	sort.SliceStable(sorted, func(i, j int) bool {
		a, b := sorted[i], sorted[j]
		if a.Conns != b.Conns {
			return a.Conns < b.Conns
		}
		if a.Round != b.Round {
			return a.Round < b.Round
		}
		return order[a.Target] < order[b.Target]
	})
	for _, s := range sorted {
		cpu := "—"
		if s.CPUSeconds > 0 {
			cpu = fmt.Sprintf("%.0f", s.CPUmsPer1k)
		}
		fmt.Fprintf(w, "| %d | %d | %s | %.0f | %.3f | %.3f | %.3f | %.3f | %.3f | %s | %d | %d |\n",
			s.Round, s.Conns, s.Target, s.RPS, s.MeanMs, s.P50Ms, s.P90Ms, s.P99Ms, s.MaxMs, cpu, s.Errors, s.Reconnects)
	}
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// ratio is a/b, or 0 when b is not positive (an added latency at or under
// the baseline's has no meaningful ratio).
func ratio(a, b float64) float64 {
	if b <= 0 {
		return 0
	}
	return a / b
}

func fmtRatio(r float64) string {
	if r == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f×", r)
}

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
