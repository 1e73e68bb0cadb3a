// Command ingressbench measures the zone ingress's SNI passthrough against
// nginx's ssl_preread on the same machine, and the per-connection latency a
// sidecar pair adds (issue 6). test/ingressbench/run.sh builds it once and
// runs each part as its own process on 127.0.0.1:
//
//	ingressbench backend  -tls ADDR -plain ADDR   TLS and plain TCP test servers
//	ingressbench ingress  -listen ADDR -sni NAME -backend ADDR
//	                                              pkg/proxy as a zone ingress
//	ingressbench mkcerts  -dir DIR                mesh CA and two workload identities
//	ingressbench sidecar  -role outbound|inbound  pkg/proxy as one side of a sidecar pair
//	ingressbench load     -targets ursa=ADDR,nginx=ADDR
//	                                              throughput and new-connection rate
//	ingressbench latency  -paths direct=ADDR,sidecars=ADDR
//	                                              time to first byte, one connection at a time
//
// The backend protocol is one request line, then the backend answers and
// closes first (so TIME_WAIT lands on the servers' side, not on the load
// generator's ephemeral ports):
//
//	P\n        "pong\n"
//	D <n>\n    n bytes inside the TLS stream (the backend encrypts, the client decrypts)
//	R <n>\n    n bytes on the bare TCP connection after the TLS handshake and request:
//	           what the proxy itself costs, without the endpoints' crypto
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	cmds := map[string]func([]string) error{
		"backend": backendMain,
		"ingress": ingressMain,
		"mkcerts": mkcertsMain,
		"sidecar": sidecarMain,
		"load":    loadMain,
		"latency": latencyMain,
	}
	cmd, ok := cmds[os.Args[1]]
	if !ok {
		usage()
	}
	if err := cmd(os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "ingressbench %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: ingressbench backend|ingress|mkcerts|sidecar|load|latency [flags] (see -h of each)")
	os.Exit(2)
}
