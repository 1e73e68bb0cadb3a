// Command httpbench measures the HTTP requests/s and the latency a sidecar
// pair adds — the built-in proxy (two ursa-dp configured by a zone CP)
// against nginx and HAProxy as sidecar pairs on the same machine (issue
// 15). test/httpbench/run.sh builds it once and runs each part as its own
// process on 127.0.0.1:
//
//	httpbench backend -listen ADDR            HTTP/1.1 keep-alive server, small fixed body
//	httpbench mkcerts -dir DIR                mesh CA and two workload identities (PEM)
//	httpbench load    -targets direct=ADDR,nginx=ADDR,...
//	                                          closed-loop keep-alive load at fixed
//	                                          concurrency levels: requests/s, p50/p99
//
// Every path ends at the same backend; the first target (direct: the
// backend itself) is the baseline the others' added latency is taken from.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	cmds := map[string]func([]string) error{
		"backend": backendMain,
		"mkcerts": mkcertsMain,
		"load":    loadMain,
	}
	cmd, ok := cmds[os.Args[1]]
	if !ok {
		usage()
	}
	if err := cmd(os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "httpbench %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: httpbench backend|mkcerts|load [flags] (see -h of each)")
	os.Exit(2)
}

func waitSignal() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
}
