package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// systemdDir holds deploy/systemd's units and example environment files.
const systemdDir = "../../deploy/systemd"

// systemdUnit is what a unit of deploy/systemd runs, as systemd would run it.
type systemdUnit struct {
	pre      [][]string // ExecStartPre=, each's words ("+" kept: run as root)
	exec     []string   // ExecStart, words
	post     [][]string // ExecStopPost=, as pre
	user     string     // User=
	env      []string   // Environment=, in order
	envFiles []string   // EnvironmentFile=, "-" kept for optional ones
	ambient  []string   // AmbientCapabilities=, lower case without cap_
}

func readSystemdUnit(t *testing.T, name string) systemdUnit {
	t.Helper()
	f, err := os.Open(filepath.Join(systemdDir, name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var u systemdUnit
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, val, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if !ok || strings.HasPrefix(key, "#") {
			continue
		}
		switch key {
		case "ExecStartPre":
			u.pre = append(u.pre, strings.Fields(val))
		case "ExecStart":
			u.exec = strings.Fields(val)
		case "ExecStopPost":
			u.post = append(u.post, strings.Fields(val))
		case "User":
			u.user = val
		case "Environment":
			u.env = append(u.env, val)
		case "EnvironmentFile":
			u.envFiles = append(u.envFiles, val)
		case "AmbientCapabilities":
			for _, c := range strings.Fields(val) {
				u.ambient = append(u.ambient, strings.ToLower(strings.TrimPrefix(c, "CAP_")))
			}
		}
	}
	return u
}

// expandEnv replaces ${NAME} in a command's word with NAME's value in env
// (the last setting wins), as systemd does in Exec lines.
func expandEnv(word string, env []string) string {
	return os.Expand(word, func(name string) string {
		v := ""
		for _, e := range env {
			if k, val, _ := strings.Cut(e, "="); k == name {
				v = val
			}
		}
		return v
	})
}

// envFileVars reads a systemd environment file: KEY=VALUE lines, # comments.
func envFileVars(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var vars []string
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		vars = append(vars, line)
	}
	return vars
}

// TestSystemdUnitsRunTwoZones follows README "Run a VM zone" on hosts that
// are network namespaces: each of deploy/systemd's units runs its ExecStart
// as systemd would, with its Environment= and EnvironmentFile= settings
// (written from the *.env.example files, /etc/ursa moved to a folder per host
// and the example host names replaced by the hosts' addresses), as an
// unprivileged user holding only the unit's ambient capabilities. The
// sidecars run the transparent proxy, and the zones the default VIP CIDR: a
// client on web's host in zone-1 resolves billing.mesh through the host's
// resolv.conf (zone-1's CP, redirected to the sidecar) and reaches billing,
// which runs only in zone-2, at its VIP, through zone-2's ingress.
func TestSystemdUnitsRunTwoZones(t *testing.T) {
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv (util-linux) is needed to run the units' commands as an unprivileged user")
	}
	if _, err := exec.LookPath("dig"); err != nil {
		t.Skip("dig (dnsutils) is needed to resolve billing.mesh on web's host")
	}
	demo := filepath.Join(t.TempDir(), "ursa-demo")
	if out, err := exec.Command("go", "build", "-o", demo, "github.com/ursamesh/ursa/cmd/ursa-demo").CombinedOutput(); err != nil {
		t.Fatalf("build ursa-demo: %v\n%s", err, out)
	}
	h := newHosts(t, "global", "cp1", "cp2", "ingress2", "billing2", "web1")
	names := strings.NewReplacer(
		"global.example.internal", h.addr("global"),
		"zone-1-cp.example.internal", h.addr("cp1"),
		"zone-2-cp.example.internal", h.addr("cp2"))
	// t.TempDir's parent is closed to other users: the units' user reads
	// its /etc/ursa as it would a host's, in a folder open to it.
	base, err := os.MkdirTemp("", "ursa-systemd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	// The binaries, where the units' user may run them (as /usr/local/bin).
	usrBin := filepath.Join(base, "bin")
	if err := os.Mkdir(usrBin, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"ursa-cp", "ursa-dp"} {
		b, err := os.ReadFile(filepath.Join(bin, name))
		if err == nil {
			err = os.WriteFile(filepath.Join(usrBin, name), b, 0o755)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	etc := map[string]string{}
	for _, host := range []string{"global", "cp1", "cp2", "ingress2", "billing2", "web1"} {
		dir := filepath.Join(base, host)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, sub := range []string{"tokens", "dataplanes"} {
			if err := os.Mkdir(filepath.Join(dir, sub), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		etc[host] = dir
	}
	// put writes /etc/ursa/NAME of host, readable by the units' user.
	put := func(host, name, text string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(etc[host], name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// example is deploy/systemd's example NAME as it is edited for host.
	example := func(host, name string, r *strings.Replacer) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(systemdDir, name))
		if err != nil {
			t.Fatal(err)
		}
		text := string(b)
		if r != nil {
			text = r.Replace(text)
		}
		text = names.Replace(text)
		return strings.ReplaceAll(text, "/etc/ursa/", etc[host]+"/")
	}
	get := func(host, url string) string {
		t.Helper()
		resp, err := h.client(t, host).Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s from %s: %v %s %s", url, host, err, resp.Status, b)
		}
		return string(b)
	}
	ctlOn := func(host, stdin string, args ...string) string {
		t.Helper()
		out, errOut, err := h.ctl(t, host, nil, "http://127.0.0.1:5681", stdin, args...)
		if err != nil {
			t.Fatalf("ursactl %s on %s: %v\n%s", strings.Join(args, " "), host, err, errOut)
		}
		return out
	}
	// legacy holds iptables-save and iptables-restore that are the legacy
	// ones (Ubuntu 20.04's, Amazon Linux 2's): web's host has them first in
	// its units' PATH, billing's the nft ones this machine has.
	legacy := filepath.Join(base, "legacy")
	if err := os.Mkdir(legacy, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"iptables-save", "iptables-restore", "ip6tables-save", "ip6tables-restore"} {
		if err := os.Symlink("/usr/sbin/xtables-legacy-multi", filepath.Join(legacy, name)); err != nil {
			t.Fatal(err)
		}
	}
	legacyHosts := map[string]bool{"web1": true}
	// command is one of unit's command lines on host as systemd runs it:
	// ${VAR} expanded from env; as the unit's user (here nobody) holding
	// only its ambient capabilities, or as root when it starts with "+".
	command := func(host, unit string, u systemdUnit, line, env []string) *exec.Cmd {
		t.Helper()
		root := strings.HasPrefix(line[0], "+")
		bin := strings.TrimPrefix(line[0], "+")
		if len(line) < 2 || !strings.HasPrefix(bin, "/usr/local/bin/") {
			t.Fatalf("%s: command %q", unit, line)
		}
		args := []string{"netns", "exec", h.namespace(t, host)}
		if !root {
			args = append(args, setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--pdeathsig=KILL")
			if len(u.ambient) > 0 {
				caps := "+" + strings.Join(u.ambient, ",+")
				args = append(args, "--inh-caps="+caps, "--ambient-caps="+caps)
			}
		}
		args = append(args, filepath.Join(usrBin, strings.TrimPrefix(bin, "/usr/local/bin/")))
		for _, w := range line[1:] {
			args = append(args, expandEnv(w, env))
		}
		cmd := exec.Command("ip", args...)
		cmd.Env = env
		return cmd
	}
	// run starts unit (instance for a template) on host as systemd would:
	// its ExecStartPre lines, one after the other, then ExecStart. Its
	// stop runs ExecStopPost after ExecStart's process exits.
	run := func(host, unit, instance, readyURL string) *unitProc {
		t.Helper()
		u := readSystemdUnit(t, unit)
		path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" // systemd's default
		if legacyHosts[host] {
			path = legacy + ":" + path
		}
		env := []string{"PATH=" + path}
		for _, e := range u.env {
			e = strings.ReplaceAll(strings.ReplaceAll(e, "%i", instance), "/etc/ursa/", etc[host]+"/")
			if k, v, _ := strings.Cut(e, "="); v == u.user {
				e = k + "=nobody" // the units' user, here
			}
			env = append(env, e)
		}
		for _, f := range u.envFiles {
			optional := strings.HasPrefix(f, "-")
			path := strings.ReplaceAll(strings.ReplaceAll(strings.TrimPrefix(f, "-"), "%i", instance), "/etc/ursa/", etc[host]+"/")
			if _, err := os.Stat(path); err != nil && optional {
				continue
			}
			env = append(env, envFileVars(t, path)...)
		}
		for _, line := range u.pre {
			if out, err := command(host, unit, u, line, env).CombinedOutput(); err != nil {
				t.Fatalf("%s %s on %s: ExecStartPre %q: %v\n%s", unit, instance, host, line, err, out)
			}
		}
		cmd := command(host, unit, u, u.exec, env)
		p := launch(t, unit+" "+instance+" on "+host, cmd)
		waitReadyVia(t, h.client(t, host), readyURL, p)
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
		if err != nil || !regexp.MustCompile(`(?m)^Uid:\s+65534\s`).Match(status) {
			t.Fatalf("%s on %s does not run as the unprivileged user: %v\n%s", unit, host, err, status)
		}
		return &unitProc{proc: p, post: func() {
			for _, line := range u.post {
				if out, err := command(host, unit, u, line, env).CombinedOutput(); err != nil {
					t.Fatalf("%s %s on %s: ExecStopPost %q: %v\n%s", unit, instance, host, line, err, out)
				}
			}
		}}
	}

	put("global", "global.env", example("global", "global.env.example", strings.NewReplacer(
		"URSA_STORE=postgres:", "#URSA_STORE=postgres:")))
	run("global", "ursa-cp-global.service", "", "http://127.0.0.1:5681/readyz")
	ctlOn("global", openMTLSMesh, "apply", "-f", "-")
	cps := map[string]*unitProc{}
	for _, z := range []string{"1", "2"} {
		cpHost := "cp" + z
		put(cpHost, "tokens/zone.token", ctlOn("global", "", "generate", "zone-token", "--zone", "zone-"+z))
		put(cpHost, "kds-ca.pem", get(cpHost, "http://"+h.addr("global")+":5681/kds/ca.pem"))
		put(cpHost, "zone.env", example(cpHost, "zone.env.example", strings.NewReplacer(
			"zone-1", "zone-"+z,
			"URSA_STORE=postgres:", "#URSA_STORE=postgres:", "#URSA_STORE=memory", "URSA_STORE=memory",
			// No resolver outside the hosts: names outside .mesh are refused.
			"URSA_DNS_UPSTREAMS=", "#URSA_DNS_UPSTREAMS=")))
		cps[z] = run(cpHost, "ursa-cp-zone.service", "", "http://127.0.0.1:5681/readyz")
	}
	// Each zone's hosts get its xDS CA and tokens, made on its CP's host.
	xdsCA := map[string]string{"1": get("cp1", "http://127.0.0.1:5681/xds/ca.pem"), "2": get("cp2", "http://127.0.0.1:5681/xds/ca.pem")}
	for host, z := range map[string]string{"ingress2": "2", "billing2": "2", "web1": "1"} {
		put(host, "xds-ca.pem", xdsCA[z])
	}
	put("ingress2", "tokens/ingress.token", ctlOn("cp2", "", "generate", "ingress-token", "--zone", "zone-2"))
	put("billing2", "tokens/billing.token", ctlOn("cp2", "", "generate", "dataplane-token", "--mesh", "default", "--service", "billing", "--name", "billing"))
	put("web1", "tokens/web.token", ctlOn("cp1", "", "generate", "dataplane-token", "--mesh", "default", "--service", "web", "--name", "web"))

	to2 := strings.NewReplacer("zone-1", "zone-2")
	// The ingress has listeners, and so is ready, once its zone has a service.
	// billing's app binds its port (the inbound's servicePort) on every
	// address: the transparent proxy keeps other hosts from it.
	launch(t, "billing app", exec.Command("ip", "netns", "exec", h.namespace(t, "billing2"), demo, "--addr", ":8080", "--message", "billing in zone-2"))
	put("billing2", "dp.env", example("billing2", "dp.env.example", to2))
	put("billing2", "dp-billing.env", example("billing2", "dp-billing.env.example", nil))
	put("billing2", "dataplanes/billing.yaml", "type: Dataplane\nmesh: default\nname: billing\nnetworking:\n  address: "+
		h.addr("billing2")+"\n  inbound: [{port: 10011, servicePort: 8080, tags: {ursa.io/service: billing}}]\n")
	run("billing2", "ursa-dp@.service", "billing", "http://127.0.0.1:9911/ready")

	put("ingress2", "ingress.env", example("ingress2", "ingress.env.example", to2))
	put("ingress2", "zone-ingress.yaml", "type: ZoneIngress\nname: ingress\nzone: zone-2\nnetworking: {address: "+
		h.addr("ingress2")+", port: 10001, advertisedAddress: "+h.addr("ingress2")+", advertisedPort: 10001}\n")
	run("ingress2", "ursa-ingress.service", "", "http://127.0.0.1:9902/ready")

	put("web1", "dp.env", example("web1", "dp.env.example", nil))
	put("web1", "dataplanes/web.yaml", "type: Dataplane\nmesh: default\nname: web\nnetworking:\n  address: "+
		h.addr("web1")+"\n  inbound: [{port: 10012, servicePort: 8000, tags: {ursa.io/service: web}}]\n")
	web := run("web1", "ursa-dp@.service", "web", "http://127.0.0.1:9901/ready")

	// web's host names zone-1's CP as its resolver; the sidecar answers.
	resolv := filepath.Join("/etc/netns", h.namespace(t, "web1"))
	if err := os.MkdirAll(resolv, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(resolv, "resolv.conf"), []byte("nameserver "+h.addr("cp1")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var vip string
	eventually(t, "billing.mesh to resolve on web's host", func() bool {
		out, err := exec.Command("ip", "netns", "exec", h.namespace(t, "web1"), "dig", "+short", "+time=1", "+tries=1", "billing.mesh").Output()
		vip = strings.TrimSpace(string(out))
		return err == nil && strings.HasPrefix(vip, "240.")
	})
	// web's sidecar answers .mesh itself, at 127.0.0.1:15053.
	eventually(t, "billing.mesh to resolve at web's sidecar", func() bool {
		out, err := exec.Command("ip", "netns", "exec", h.namespace(t, "web1"), "dig", "@127.0.0.1", "-p", "15053", "+short", "+time=1", "+tries=1", "billing.mesh").Output()
		return err == nil && strings.TrimSpace(string(out)) == vip
	})
	client := h.client(t, "web1")
	eventually(t, "billing.mesh from web's host to reach billing in zone-2", func() bool {
		resp, err := client.Get("http://" + vip + "/")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode == http.StatusOK && strings.Contains(string(b), "billing in zone-2")
	})
	// billing's host calls billing at its own address and inbound port
	// (a service's instance calling itself as a peer): its sidecar's mTLS
	// to its own address reaches its inbound listener by the socket's
	// mark (the unit grants CAP_NET_ADMIN for it), not the app's port
	// around it.
	self := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: h.dialer(t, "billing2"), DisableKeepAlives: true}}
	eventually(t, "billing's host to reach billing at its own address through its sidecar", func() bool {
		resp, err := self.Get("http://" + h.addr("billing2") + ":10011/")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode == http.StatusOK && strings.Contains(string(b), "billing in zone-2")
	})
	// The units' KillSignal: each stops cleanly.
	// A host without a sidecar gets nothing from billing's app in plaintext
	// at its own port, around its sidecar.
	plain := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: h.dialer(t, "ingress2")}}
	if resp, err := plain.Get("http://" + h.addr("billing2") + ":8080/"); err == nil {
		resp.Body.Close()
		t.Fatalf("a plaintext client reached billing's app at its servicePort around the sidecar: %s", resp.Status)
	}
	// A second sidecar of web's host turns the transparent proxy off, as
	// dp-billing.env.example says: its unit installs nothing, and its stop
	// leaves web's rules alone.
	put("web1", "tokens/report.token", ctlOn("cp1", "", "generate", "dataplane-token", "--mesh", "default", "--service", "report", "--name", "report"))
	put("web1", "dp-report.env", example("web1", "dp-billing.env.example", strings.NewReplacer(
		"127.0.0.1:9911", "127.0.0.1:9913", "#URSA_TRANSPARENT_PROXY=false", "URSA_TRANSPARENT_PROXY=false", "#URSA_DNS_ADDR=", "URSA_DNS_ADDR=")))
	put("web1", "dataplanes/report.yaml", "type: Dataplane\nmesh: default\nname: report\nnetworking:\n  address: "+
		h.addr("web1")+"\n  inbound: [{port: 10013, servicePort: 8001, tags: {ursa.io/service: report}}]\n")
	run("web1", "ursa-dp@.service", "report", "http://127.0.0.1:9913/ready").stop(t)
	eventually(t, "billing.mesh from web's host after the second sidecar stopped", func() bool {
		resp, err := client.Get("http://" + vip + "/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	// web's host has legacy iptables: its rules are there, installed by
	// the unit's ExecStartPre as root (its sidecar could not: legacy
	// iptables needs CAP_NET_RAW and root's /run/xtables.lock).
	legacySave := func() string {
		out, err := exec.Command("ip", "netns", "exec", h.namespace(t, "web1"), "iptables-legacy-save", "-t", "nat").CombinedOutput()
		if err != nil {
			t.Fatalf("iptables-legacy-save on web's host: %v\n%s", err, out)
		}
		return string(out)
	}
	if out := legacySave(); !strings.Contains(out, "URSA_OUTPUT") {
		t.Fatalf("web's host has no legacy rules of ours while its sidecar runs:\n%s", out)
	}
	web.stop(t)
	cps["1"].stop(t)
	if out := legacySave(); strings.Contains(out, "URSA_") {
		t.Fatalf("after ursa-dp@web stopped, web's host holds:\n%s", out)
	}
}

// unitProc is a unit's ExecStart process, and its ExecStopPost lines.
type unitProc struct {
	*proc
	post func()
}

// stop stops the process as systemd does, then runs ExecStopPost.
func (u *unitProc) stop(t *testing.T) {
	t.Helper()
	u.proc.stop(t)
	u.post()
}
