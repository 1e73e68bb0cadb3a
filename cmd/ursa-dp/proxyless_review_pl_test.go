package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestReviewPLBootstrapTokenNeverRenewed: by default (no --jwt-call-creds)
// the application's only credential towards the zone CP is the token copied
// into its bootstrap's node metadata when the agent started. The CP ends a
// stream when its token expires (README: "A proxy's stream ends when its
// token expires"), and grpc-go reads GRPC_XDS_BOOTSTRAP once, at start; the
// agent itself takes the renewed --token-file at its next connection, but
// never rewrites the bootstrap. So once the first token expires (on
// Kubernetes, a pod's service-account token: about an hour) the application
// is refused on every reconnect and runs on frozen xDS (no endpoint, route
// or policy change reaches it), and even restarting the application does not
// help: its bootstrap still carries the expired token until ursa-dp itself
// is restarted.
func TestReviewPLBootstrapTokenNeverRenewed(t *testing.T) {
	tokenFile, _, token := startTokenAgent(t)
	// The token is renewed (ursactl generate dataplane-token, or the
	// kubelet rotating the projected service-account token).
	os.WriteFile(tokenFile, []byte("renewed-token\n"), 0o600)
	deadline := time.Now().Add(15 * time.Second)
	for token() != "renewed-token" && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if got := token(); got != "renewed-token" {
		t.Fatalf("15s after --token-file was renewed, the application's bootstrap still presents %q: after the first token expires the application can never reconnect to the zone CP", got)
	}
}

// startTokenAgent runs ursa-dp proxyless against an unreachable CP with a
// token file holding "first-token", until the test ends; it returns the
// token file, the bootstrap's path and a reader of the token the
// bootstrap holds, once that is "first-token".
func startTokenAgent(t *testing.T) (tokenFile, boot string, token func() string) {
	t.Helper()
	dir := t.TempDir()
	dp := filepath.Join(dir, "dp.yaml")
	os.WriteFile(dp, []byte("type: Dataplane\nmesh: default\nname: web-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - {port: 9000, tags: {ursa.io/service: web}}\n"), 0o600)
	tokenFile = filepath.Join(dir, "web.token")
	os.WriteFile(tokenFile, []byte("first-token\n"), 0o600)
	certs := filepath.Join(dir, "certs")
	boot = filepath.Join(certs, "bootstrap.json")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- runProxyless(ctx, proxylessConfig{DataplaneFile: dp, CertDir: certs, CPAddress: "grpc://127.0.0.1:1", XDSInsecure: true, TokenFile: tokenFile})
	}()
	t.Cleanup(func() { cancel(); <-done })
	token = func() string {
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
	return tokenFile, boot, token
}
