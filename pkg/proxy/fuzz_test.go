package proxy

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"
)

// FuzzPeekSNI feeds an ingress whatever a remote caller may send before TLS:
// the peek must never panic or hang, and when it finds an SNI the bytes it
// hands on are exactly the bytes that came in.
func FuzzPeekSNI(f *testing.F) {
	hello := clientHello(f, "billing-0123456789.default.ursa")
	f.Add(hello)
	f.Add(hello[:len(hello)/2])
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Add([]byte{0x16, 0x03, 0x01, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, in []byte) {
		client, server := net.Pipe()
		defer server.Close()
		go func() {
			client.Write(in)
			client.Close()
		}()
		done := make(chan struct{})
		go func() {
			defer close(done)
			sni, replay, err := peekSNI(server)
			if err != nil || sni == "" {
				return
			}
			got, _ := io.ReadAll(replay)
			if !bytes.Equal(got, in) {
				t.Errorf("SNI %q: replayed %d bytes, want the %d that came in", sni, len(got), len(in))
			}
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("peekSNI hung on a closed connection")
		}
	})
}

// clientHello is what a TLS client sends first, for server name sni.
func clientHello(f *testing.F, sni string) []byte {
	client, server := net.Pipe()
	defer server.Close()
	go func() {
		tls.Client(client, &tls.Config{ServerName: sni, InsecureSkipVerify: true}).Handshake()
		client.Close()
	}()
	server.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64<<10)
	n, err := server.Read(buf)
	if err != nil {
		f.Fatal(err)
	}
	return buf[:n]
}
