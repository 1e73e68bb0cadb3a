package helm

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/pgtest"
)

// TestGlobalChartStartsOnFreshDatabase installs the global the way
// the chart does (controlPlane.mode=global, postgres.secretName naming a
// Secret with the URL of a new, empty PostgreSQL database) and runs what the
// rendered manifests run, in the order Kubernetes would: Helm hook Jobs
// (pre-install), then the control plane Deployment's init containers, then
// its container, with the Secret's URL in URSA_STORE. The global must become
// ready: a `helm install` of a global on a database made for it is the
// documented way to start one (values.yaml, README "Run a Kubernetes zone").
// The chart's init container applies the schema; without it the global
// refused the new database, and crash-looped.
func TestGlobalChartStartsOnFreshDatabase(t *testing.T) {
	cluster, err := pgtest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dbURL, err := cluster.NewDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}

	vs := valueSet{"global-secret", []string{"controlPlane.mode=global", "postgres.secretName=ursa-db"}}
	objs := parse(t, render(t, "ursa-system", vs))

	// Everything that runs ursa-cp before or beside the CP container.
	type step struct {
		what string
		c    object
	}
	var before []step
	var cp object
	for _, o := range objs {
		switch o.kind() {
		case "Job":
			for _, c := range list(get(o, "spec", "template", "spec", "containers")) {
				before = append(before, step{"job " + o.name(), c.(object)})
			}
		case "Deployment":
			if o.name() != "ursa-control-plane" {
				continue
			}
			for _, c := range list(get(o, "spec", "template", "spec", "initContainers")) {
				before = append(before, step{"init container", c.(object)})
			}
			for _, c := range list(get(o, "spec", "template", "spec", "containers")) {
				if c.(object)["name"] == "control-plane" {
					cp = c.(object)
				}
			}
		}
	}
	if cp == nil {
		t.Fatal("no control-plane container rendered")
	}
	bin := filepath.Join(binaries(t), "ursa-cp")
	env := func(c object) []string {
		var out []string
		for _, e := range list(c["env"]) {
			name, _ := get(e, "name").(string)
			switch {
			case get(e, "valueFrom", "secretKeyRef", "name") == "ursa-db":
				out = append(out, name+"="+dbURL)
			case get(e, "value") != nil:
				out = append(out, fmt.Sprintf("%s=%v", name, get(e, "value")))
			}
		}
		return append(out, "URSA_INSTANCE=ursa-control-plane-0", "HOME=/tmp", "PATH=/usr/bin:/bin")
	}
	strs := func(v any) []string {
		var out []string
		for _, s := range list(v) {
			out = append(out, s.(string))
		}
		return out
	}
	for _, s := range before {
		cmd := exec.CommandContext(ctx, bin, strs(s.c["args"])...)
		cmd.Env = env(s.c)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", s.what, s.c["args"], err, out)
		}
	}

	ports := freePorts(t, 3)
	api := "127.0.0.1:" + strconv.Itoa(ports[0])
	args := append(strs(cp["args"]), "--api-addr="+api, "--api-tls-addr=127.0.0.1:"+strconv.Itoa(ports[1]),
		"--kds-addr=127.0.0.1:"+strconv.Itoa(ports[2]))
	t.Logf("ran before the CP: %d step(s); the CP: ursa-cp %s", len(before), strings.Join(args, " "))
	// startCP takes no environment: run it through env(1).
	proc := startCPEnv(t, env(cp), args)
	eventually(t, proc, 30*time.Second, "the global to be ready", func() error {
		resp, err := http.Get("http://" + api + "/readyz")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/readyz: %d %s", resp.StatusCode, b)
		}
		return nil
	})
}
