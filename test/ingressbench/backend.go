package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// chunk is what the backend writes per call when streaming.
const chunk = 256 << 10

func backendMain(args []string) error {
	fs := flag.NewFlagSet("backend", flag.ExitOnError)
	tlsAddr := fs.String("tls", "127.0.0.1:17443", "TLS listener (self-signed certificate for -name)")
	plainAddr := fs.String("plain", "", "plain TCP listener (the sidecar pair's application), empty for none")
	name := fs.String("name", "backend.bench", "DNS name in the self-signed certificate")
	fs.Parse(args)

	cert, err := selfSigned(*name)
	if err != nil {
		return err
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		// No NewSessionTicket after the handshake: nothing but what the
		// request asks for follows it, so R can switch to the bare TCP
		// stream, and every connection is a full handshake anyway.
		SessionTicketsDisabled: true,
	}
	payload := make([]byte, chunk)
	rand.Read(payload)

	tl, err := net.Listen("tcp", *tlsAddr)
	if err != nil {
		return err
	}
	go accept(tl, func(c net.Conn) { serveTLS(c, cfg, payload) })
	if *plainAddr != "" {
		pl, err := net.Listen("tcp", *plainAddr)
		if err != nil {
			return err
		}
		go accept(pl, func(c net.Conn) { serve(c, c, c, payload) })
	}
	fmt.Fprintf(os.Stderr, "backend: TLS on %s, plain on %q\n", *tlsAddr, *plainAddr)
	waitSignal()
	return nil
}

func waitSignal() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
}

func accept(ln net.Listener, handle func(net.Conn)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			fmt.Fprintf(os.Stderr, "accept on %s: %v\n", ln.Addr(), err)
			return
		}
		go handle(c)
	}
}

func serveTLS(raw net.Conn, cfg *tls.Config, payload []byte) {
	tc := tls.Server(raw, cfg)
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		raw.Close()
		return
	}
	serve(tc, tc, raw, payload)
}

// serve reads one request line from r and answers on w (or, for R, on the
// bare connection raw), then closes.
func serve(r io.Reader, w io.WriteCloser, raw net.Conn, payload []byte) {
	defer w.Close()
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := readLine(r)
	if err != nil {
		return
	}
	raw.SetDeadline(time.Time{})
	op, arg, _ := strings.Cut(line, " ")
	switch op {
	case "P":
		w.Write([]byte("pong\n"))
	case "D", "R":
		n, err := strconv.ParseInt(arg, 10, 64)
		if err != nil {
			return
		}
		var dst io.Writer = w
		if op == "R" {
			dst = raw
		}
		for n > 0 {
			b := payload[:min(int64(len(payload)), n)]
			if _, err := dst.Write(b); err != nil {
				return
			}
			n -= int64(len(b))
		}
		if op == "R" {
			raw.Close() // no close_notify inside a stream that is no longer TLS
		}
	}
}

// readLine reads up to '\n' without reading past it (the client sends
// nothing after its request line, so a short read loop is enough).
func readLine(r io.Reader) (string, error) {
	var buf [64]byte
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if i := bytes.IndexByte(buf[:n], '\n'); i >= 0 {
			return string(buf[:i]), nil
		}
		if err != nil {
			return "", err
		}
	}
	return "", errors.New("request line too long")
}

// selfSigned makes an ECDSA P-256 certificate for name, as a service
// behind an ingress would present (the client does not verify it: the
// benchmark is about the proxy in between).
func selfSigned(name string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
