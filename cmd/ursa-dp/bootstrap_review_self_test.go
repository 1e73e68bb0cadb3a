package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestReviewBootstrapRenewalNotRetriedAfterFailedWrite: the agent records
// a renewed token as the bootstrap's (meta[ursa.io/token] = token) before
// it writes the bootstrap; when that write fails once (a full disk, the
// file briefly in the way), the next polls see the token as already there
// and never write it again: the application's bootstrap keeps the old
// token (or, here, none) until the token is renewed once more.
func TestReviewBootstrapRenewalNotRetriedAfterFailedWrite(t *testing.T) {
	dir := t.TempDir()
	dp := filepath.Join(dir, "dp.yaml")
	os.WriteFile(dp, []byte("type: Dataplane\nmesh: default\nname: web-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - {port: 9000, tags: {ursa.io/service: web}}\n"), 0o600)
	tokenFile := filepath.Join(dir, "web.token")
	os.WriteFile(tokenFile, []byte("first-token\n"), 0o600)
	certs := filepath.Join(dir, "certs")
	boot := filepath.Join(certs, "bootstrap.json")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- runProxyless(ctx, proxylessConfig{DataplaneFile: dp, CertDir: certs, CPAddress: "grpc://127.0.0.1:1", XDSInsecure: true, TokenFile: tokenFile})
	}()
	defer func() { cancel(); <-done }()
	token := func() string {
		var b struct {
			Node struct {
				Metadata map[string]string `json:"metadata"`
			} `json:"node"`
		}
		raw, err := os.ReadFile(boot)
		if err != nil || json.Unmarshal(raw, &b) != nil {
			return ""
		}
		return b.Node.Metadata["ursa.io/token"]
	}
	for deadline := time.Now().Add(5 * time.Second); token() == "" && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	if got := token(); got != "first-token" {
		t.Fatalf("bootstrap token %q", got)
	}
	// The bootstrap's path is briefly unwritable (a rename onto a
	// non-empty directory fails, even for root) while the token is renewed.
	os.Remove(boot)
	os.MkdirAll(filepath.Join(boot, "x"), 0o700)
	os.WriteFile(tokenFile, []byte("renewed-token\n"), 0o600)
	time.Sleep(tokenPoll + 2*time.Second) // one poll fails to write
	os.RemoveAll(boot)
	deadline := time.Now().Add(2*tokenPoll + 2*time.Second)
	for token() != "renewed-token" && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if got := token(); got != "renewed-token" {
		t.Fatalf("%v after the bootstrap's path was writable again, the bootstrap holds token %q, want the renewed one: a failed write is never tried again",
			2*tokenPoll+2*time.Second, got)
	}
}
