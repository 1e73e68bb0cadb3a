package main

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestGenerateZoneToken(t *testing.T) {
	tests := []struct {
		name         string
		args         []string
		wantCode     int
		wantStdout   string
		wantStderr   string
		wantValidFor time.Duration // of the token issued, when one is
	}{
		{"default validity", []string{"--zone", "zone-1"}, exitOK, "fake-zone-token.zone-1.1.1\n", "", 0},
		{"given validity", []string{"--zone", "zone-1", "--valid-for", "720h"}, exitOK, "fake-zone-token.zone-1.1.1\n", "", 720 * time.Hour},
		{"no zone", nil, exitUsage, "", "generate zone-token needs --zone NAME", 0},
		{"bad duration", []string{"--zone", "zone-1", "--valid-for", "30d"}, exitUsage, "", `invalid argument "30d" for "--valid-for"`, 0},
		{"negative duration", []string{"--zone", "zone-1", "--valid-for", "-1h"}, exitUsage, "", "--valid-for -1h0m0s is negative", 0},
		{"positional argument", []string{"zone-1"}, exitUsage, "", "accepts 0 arg(s), received 1", 0},
		{"zone refused by the server", []string{"--zone", "Zone_1"}, exitError, "",
			"Error: generate zone token for Zone_1: Invalid request: the zone token request is not valid\nzone: \"Zone_1\" is not a DNS-1123 label\n", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake, url := startFake(t)
			res := ursactl(t, nil, "", append([]string{"--api-server", url, "generate", "zone-token"}, tt.args...)...)
			if res.code != tt.wantCode || res.stdout != tt.wantStdout || !strings.Contains(res.stderr, tt.wantStderr) {
				t.Fatalf("got code %d, stdout %q, stderr %q; want %d, %q, and stderr containing %q",
					res.code, res.stdout, res.stderr, tt.wantCode, tt.wantStdout, tt.wantStderr)
			}
			issued := fake.ZoneTokens()
			if tt.wantCode != exitOK {
				if len(issued) != 0 {
					t.Errorf("issued %+v, want nothing", issued)
				}
				return
			}
			if len(issued) != 1 || issued[0].Zone != "zone-1" || issued[0].ValidFor != tt.wantValidFor {
				t.Errorf("issued %+v, want one token for zone-1 valid for %s", issued, tt.wantValidFor)
			}
		})
	}
}

func TestGenerateZoneTokenSigningKey(t *testing.T) {
	fake, url := startFake(t)
	for _, want := range []int{2, 3} {
		res := ursactl(t, nil, "", "--api-server", url, "generate", "zone-token-signing-key")
		wantOut := fmt.Sprintf("rotated: zone tokens are now signed with key %d; every older zone token is revoked\n", want)
		if res.code != exitOK || res.stdout != wantOut {
			t.Fatalf("got code %d, stdout %q, stderr %q; want 0 and %q", res.code, res.stdout, res.stderr, wantOut)
		}
	}
	if got := fake.SigningKeySerial(); got != 3 {
		t.Errorf("signing key = %d, want 3", got)
	}
	var paths []string
	for _, r := range fake.Requests() {
		paths = append(paths, r.Method+" "+r.Path)
	}
	if want := "POST /tokens/zone/signing-key,POST /tokens/zone/signing-key"; strings.Join(paths, ",") != want {
		t.Errorf("requests = %q, want %q", paths, want)
	}
	res := ursactl(t, nil, "", "--api-server", url, "generate", "zone-token-signing-key", "now")
	if res.code != exitUsage {
		t.Errorf("with an argument: code %d, want %d", res.code, exitUsage)
	}
}

func TestGenerateNeedsWhat(t *testing.T) {
	tests := []struct {
		args       []string
		wantStderr string
	}{
		{[]string{"generate"}, "generate needs what to generate: zone-token, zone-token-signing-key, dataplane-token, dataplane-token-signing-key, ingress-token, ingress-token-signing-key, user-token or user-token-signing-key"},
		{[]string{"generate", "zone-tokens"}, `cannot generate "zone-tokens": use zone-token, zone-token-signing-key, dataplane-token, dataplane-token-signing-key, ingress-token, ingress-token-signing-key, user-token or user-token-signing-key`},
	}
	for _, tt := range tests {
		fake, url := startFake(t)
		res := ursactl(t, nil, "", append([]string{"--api-server", url}, tt.args...)...)
		if res.code != exitUsage || !strings.Contains(res.stderr, tt.wantStderr) {
			t.Errorf("%q: code %d, stderr %q; want %d and %q", tt.args, res.code, res.stderr, exitUsage, tt.wantStderr)
		}
		if n := len(fake.Requests()); n != 0 {
			t.Errorf("%q: made %d requests, want none", tt.args, n)
		}
	}
}

// TestGenerateProxyTokensUsage: bad flags of dataplane-token and
// ingress-token are refused before any request.
func TestGenerateProxyTokensUsage(t *testing.T) {
	tests := []struct {
		args       []string
		wantStderr string
	}{
		{[]string{"generate", "dataplane-token"}, "generate dataplane-token needs --mesh MESH"},
		{[]string{"generate", "dataplane-token", "--mesh", "default", "--tag", "version"}, `--tag "version": use KEY=VALUE`},
		{[]string{"generate", "dataplane-token", "--mesh", "default", "--tag", "=v1"}, `--tag "=v1": use KEY=VALUE`},
		{[]string{"generate", "dataplane-token", "--mesh", "default", "--tag", "v=1", "--tag", "v=2"}, "--tag v is given twice, as 1 and 2"},
		{[]string{"generate", "dataplane-token", "--mesh", "default", "--valid-for", "-1h"}, "--valid-for -1h0m0s is negative"},
		{[]string{"generate", "ingress-token"}, "generate ingress-token needs --zone ZONE"},
		{[]string{"generate", "ingress-token", "--zone", "zone-1", "--valid-for", "-1h"}, "--valid-for -1h0m0s is negative"},
	}
	for _, tt := range tests {
		fake, url := startFake(t)
		res := ursactl(t, nil, "", append([]string{"--api-server", url}, tt.args...)...)
		if res.code != exitUsage || !strings.Contains(res.stderr, tt.wantStderr) {
			t.Errorf("%q: code %d, stderr %q; want %d and %q", tt.args, res.code, res.stderr, exitUsage, tt.wantStderr)
		}
		if n := len(fake.Requests()); n != 0 {
			t.Errorf("%q: made %d requests, want none", tt.args, n)
		}
	}
}
