package main

import (
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
	tokenFile, boot, token := startTokenAgent(t)
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
