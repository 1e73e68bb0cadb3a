package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestProxylessBadFlags: ursa-dp proxyless refuses what it cannot use,
// naming the flag, before it writes anything.
func TestProxylessBadFlags(t *testing.T) {
	dir := t.TempDir()
	dp := filepath.Join(dir, "dp.yaml")
	os.WriteFile(dp, []byte("type: Dataplane\nmesh: default\nname: web-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - {port: 9000, tags: {ursa.io/service: web}}\n"), 0o600)
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("type: Dataplane\nmesh: default\nname: web-1\n"), 0o600)
	certs := filepath.Join(dir, "certs")
	for _, tc := range []struct {
		name string
		cfg  proxylessConfig
		err  string
	}{
		{"no dataplane", proxylessConfig{CertDir: certs}, "--dataplane-file, or --dataplane-name"},
		{"both", proxylessConfig{DataplaneFile: dp, DataplaneName: "web-1", Mesh: "default", CertDir: certs}, "not both"},
		{"bad dataplane", proxylessConfig{DataplaneFile: bad, CertDir: certs}, "--dataplane-file " + bad},
		{"no cert dir", proxylessConfig{DataplaneFile: dp}, "--cert-dir"},
		{"plaintext", proxylessConfig{DataplaneFile: dp, CertDir: certs, CPAddress: "grpc://127.0.0.1:5678"}, "--xds-insecure"},
		{"no ca", proxylessConfig{DataplaneFile: dp, CertDir: certs, CPAddress: "grpcs://127.0.0.1:5678"}, "--ca-cert-file"},
		{"no token", proxylessConfig{DataplaneFile: dp, CertDir: certs, CPAddress: "grpc://127.0.0.1:5678", XDSInsecure: true,
			TokenFile: filepath.Join(dir, "nope")}, "--token-file"},
		{"jwt without a token file", proxylessConfig{DataplaneFile: dp, CertDir: certs, CPAddress: "grpcs://127.0.0.1:5678", CACertFile: "/dev/null",
			JWTCallCreds: true}, "--jwt-call-creds"},
		{"jwt in plaintext", proxylessConfig{DataplaneFile: dp, CertDir: certs, CPAddress: "grpc://127.0.0.1:5678", XDSInsecure: true,
			TokenFile: filepath.Join(dir, "nope"), JWTCallCreds: true}, "--jwt-call-creds"},
	} {
		err := runProxyless(context.Background(), tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: %v; want an error naming %q", tc.name, err, tc.err)
		}
	}
	if _, err := os.Stat(certs); err == nil {
		t.Error("a refused start made --cert-dir")
	}
}
