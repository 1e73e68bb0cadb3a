package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/ursamesh/ursa/pkg/mtls"
)

// backendMain serves every request with 200 and the same small body over
// HTTP/1.1 keep-alive: the application behind each sidecar pair.
func backendMain(args []string) error {
	fs := flag.NewFlagSet("backend", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:17600", "listener")
	size := fs.Int("body", 128, "response body bytes")
	fs.Parse(args)

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("backend: %w", err)
	}
	srv := newBackend(*size)
	fmt.Fprintf(os.Stderr, "backend: HTTP on %s, %d-byte body\n", ln.Addr(), *size)
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintf(os.Stderr, "backend: %v\n", err)
			os.Exit(1)
		}
	}()
	waitSignal()
	return srv.Close()
}

// newBackend is the backend's server: no idle timeout shorter than a
// measurement, so that every path keeps its connections for the whole run.
func newBackend(size int) *http.Server {
	body := make([]byte, size)
	for i := range body {
		body[i] = 'a' + byte(i%26)
	}
	clen := strconv.Itoa(size)
	return &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h := w.Header()
			h["Content-Type"] = []string{"text/plain"}
			h["Content-Length"] = []string{clen}
			w.Write(body)
		}),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
	}
}

// mkcertsMain writes a mesh CA and two workload identities issued by it
// with pkg/mtls, the kind the zone CP issues to sidecars (ECDSA P-256, the
// service as CN and a SPIFFE URI SAN), for the nginx and HAProxy pairs:
// ca.pem, client.pem, client-key.pem, billing.pem, billing-key.pem, and
// client-full.pem and billing-full.pem (certificate then key, HAProxy's
// crt).
func mkcertsMain(args []string) error {
	fs := flag.NewFlagSet("mkcerts", flag.ExitOnError)
	dir := fs.String("dir", ".", "output directory")
	fs.Parse(args)
	now := time.Now()
	ca, err := mtls.NewCA("default", now)
	if err != nil {
		return err
	}
	files := map[string][]byte{"ca.pem": []byte(ca.CertPEM)}
	for _, svc := range []string{"client", "billing"} {
		id, err := mtls.Issue(ca, svc, 24*time.Hour, now)
		if err != nil {
			return err
		}
		files[svc+".pem"], files[svc+"-key.pem"] = id.CertPEM, id.KeyPEM
		files[svc+"-full.pem"] = append(append([]byte(nil), id.CertPEM...), id.KeyPEM...)
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(*dir, name), b, 0o600); err != nil {
			return fmt.Errorf("mkcerts: %w", err)
		}
	}
	return nil
}
