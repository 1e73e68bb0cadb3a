package main

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestAppProbes: a listed probe is made of the app at 127.0.0.1 with the
// kubelet's headers and answered with the app's status; anything else is a
// 404, so the admin port reaches nothing of the app but its probes.
func TestAppProbes(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/ready" && r.Header.Get("X-Probe") == "1":
			w.Write([]byte("ok"))
		case r.URL.Path == "/sick":
			http.Error(w, "sick", http.StatusInternalServerError)
		default:
			http.Error(w, "secret", http.StatusTeapot)
		}
	}))
	defer app.Close()
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(app.URL, "http://"))
	h, err := appProbes(port+"/ready,"+port+"/sick", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]int{
		"/probes/" + port + "/ready":     http.StatusOK,
		"/probes/" + port + "/sick":      http.StatusInternalServerError,
		"/probes/" + port + "/secret":    http.StatusNotFound,
		"/probes/" + port + "/ready?x=1": http.StatusNotFound,
		"/probes/1/ready":                http.StatusNotFound,
	} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodGet, path, nil)
		req.Header.Set("X-Probe", "1")
		h.ServeHTTP(rec, req)
		if rec.Code != want {
			t.Errorf("GET %s: %d %s, want %d", path, rec.Code, rec.Body, want)
		}
	}
	if _, err := appProbes("80/x", "$(POD_IP)"); err == nil {
		t.Error("a host that is no IP accepted")
	}
	for _, bad := range []string{"ready", "0/ready", "x/y", ""} {
		if _, err := appProbes(bad, "127.0.0.1"); err == nil {
			t.Errorf("--app-probes %q accepted", bad)
		}
	}
}

// TestInstallTransparentProxyRefuses: install-transparent-proxy says what
// is wrong before it touches anything: no sidecar user, a bad user or port
// list, a --dns-addr the redirection would not reach.
func TestInstallTransparentProxyRefuses(t *testing.T) {
	for want, args := range map[string][]string{
		"--exclude-outbound-uids: required":   {},
		`--exclude-outbound-uids: "x" is not`: {"--exclude-outbound-uids", "5678,x"},
		"--inbound-ports":                     {"--exclude-outbound-uids", "5678", "--inbound-ports", "8080,0"},
		"--redirect-dns-port":                 {"--exclude-outbound-uids", "5678", "--dns-addr", "127.0.0.1:5353"},
	} {
		cmd := newInstallTransparentProxy()
		cmd.SetArgs(args)
		cmd.SilenceUsage, cmd.SilenceErrors = true, true
		if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v: %v, want an error about %q", args, err, want)
		}
	}
}
