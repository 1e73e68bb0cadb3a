package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// env is the environment of c's process: a PATH, HOSTNAME, HOME and c's env
// in order, each value's $(VAR) expanded from those before it, valueFrom
// read from the pod (downward API), ConfigMaps and Secrets.
func (rp *runPod) env(c kubeContainer) ([]string, error) {
	// The harness's binaries are on the PATH, as an image's are.
	env := []string{"PATH=" + bin + ":" + execPath, "HOSTNAME=" + rp.pod.Metadata.Name, "HOME=/"}
	vars := envMap(env)
	for _, e := range c.Env {
		v := expandVars(e.Value, vars)
		if vf := e.ValueFrom; vf != nil {
			var err error
			switch {
			case vf.FieldRef != nil:
				v, err = rp.field(vf.FieldRef.FieldPath)
			case vf.ConfigMapKeyRef != nil:
				v, err = rp.key("configmaps", vf.ConfigMapKeyRef.Name, vf.ConfigMapKeyRef.Key)
			case vf.SecretKeyRef != nil:
				v, err = rp.key("secrets", vf.SecretKeyRef.Name, vf.SecretKeyRef.Key)
			default:
				err = fmt.Errorf("valueFrom: the test kubelet reads only fieldRef, configMapKeyRef and secretKeyRef")
			}
			if err != nil {
				return nil, fmt.Errorf("env %s: %w", e.Name, err)
			}
		}
		v = rp.rewrite(c, v)
		vars[e.Name] = v
		env = append(env, e.Name+"="+v)
	}
	return env, nil
}

// field is the value of a downward-API field path.
func (rp *runPod) field(path string) (string, error) {
	m := rp.pod.Metadata
	if key, ok := strings.CutPrefix(path, "metadata.labels['"); ok {
		return m.Labels[strings.TrimSuffix(key, "']")], nil
	}
	if key, ok := strings.CutPrefix(path, "metadata.annotations['"); ok {
		return m.Annotations[strings.TrimSuffix(key, "']")], nil
	}
	switch path {
	case "metadata.name":
		return m.Name, nil
	case "metadata.namespace":
		return m.Namespace, nil
	case "metadata.uid":
		return m.UID, nil
	case "spec.nodeName":
		return rp.k.nodeObj, nil
	case "spec.serviceAccountName":
		return rp.serviceAccount(), nil
	case "status.podIP", "status.podIPs":
		return rp.IP(), nil
	case "status.hostIP", "status.hostIPs":
		return rp.k.h.addr(rp.k.node), nil
	}
	return "", fmt.Errorf("fieldRef %q: not a field the test kubelet knows", path)
}

func (rp *runPod) serviceAccount() string {
	if sa := rp.pod.Spec.ServiceAccountName; sa != "" {
		return sa
	}
	return "default"
}

// key is the value of key in the ConfigMap or Secret (kind "configmaps" or
// "secrets") name of the pod's namespace.
func (rp *runPod) key(kind, name, key string) (string, error) {
	data, err := rp.objectData(kind, name)
	if err != nil {
		return "", err
	}
	v, ok := data[key]
	if !ok {
		return "", fmt.Errorf("%s %s has no key %q", kind, name, key)
	}
	return string(v), nil
}

// objectData is the data of a ConfigMap or Secret (decoded).
func (rp *runPod) objectData(kind, name string) (map[string][]byte, error) {
	path := "/api/v1/namespaces/" + rp.pod.Metadata.Namespace + "/" + kind + "/" + name
	if kind == "secrets" {
		var s struct {
			Data map[string][]byte `json:"data"`
		}
		return s.Data, rp.k.do(rp.ctx, http.MethodGet, path, "", nil, &s)
	}
	var cm struct {
		Data map[string]string `json:"data"`
	}
	if err := rp.k.do(rp.ctx, http.MethodGet, path, "", nil, &cm); err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	for k, v := range cm.Data {
		out[k] = []byte(v)
	}
	return out, nil
}

// volume writes volume v into the pod's folder. Files are readable by every
// user (the kubelet's fsGroup and ownership rules are not modelled): the
// folder is the test's own.
func (rp *runPod) volume(v kubeVolume) error {
	dir := filepath.Join(rp.dir, "volumes", v.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	rp.mu.Lock()
	rp.mounts[v.Name] = dir
	rp.mu.Unlock()
	write := func(path string, data []byte) error {
		file := under(dir, path)
		if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
			return err
		}
		return os.WriteFile(file, data, 0o644)
	}
	keys := func(kind, name string, items []kubeKeyPath) error {
		data, err := rp.objectData(kind, name)
		if err != nil {
			return err
		}
		if len(items) == 0 {
			for k := range data {
				items = append(items, kubeKeyPath{Key: k, Path: k})
			}
		}
		for _, it := range items {
			if err := write(it.Path, data[it.Key]); err != nil {
				return err
			}
		}
		return nil
	}
	fields := func(items []kubeFieldPath) error {
		for _, it := range items {
			if it.FieldRef == nil {
				return fmt.Errorf("downwardAPI %s: the test kubelet reads fieldRef only", it.Path)
			}
			val, err := rp.field(it.FieldRef.FieldPath)
			if err != nil {
				return err
			}
			if err := write(it.Path, []byte(val)); err != nil {
				return err
			}
		}
		return nil
	}
	switch {
	case v.EmptyDir != nil:
		return os.Chmod(dir, 0o777) // as Kubernetes makes it
	case v.ConfigMap != nil:
		return keys("configmaps", v.ConfigMap.Name, v.ConfigMap.Items)
	case v.Secret != nil:
		return keys("secrets", v.Secret.SecretName, v.Secret.Items)
	case v.DownwardAPI != nil:
		return fields(v.DownwardAPI.Items)
	case v.Projected != nil:
		for _, s := range v.Projected.Sources {
			var err error
			switch {
			case s.ServiceAccountToken != nil:
				var tok string
				if tok, err = rp.token(s.ServiceAccountToken.Audience, s.ServiceAccountToken.ExpirationSeconds); err == nil {
					err = write(s.ServiceAccountToken.Path, []byte(tok))
				}
			case s.ConfigMap != nil:
				err = keys("configmaps", s.ConfigMap.Name, s.ConfigMap.Items)
			case s.Secret != nil:
				err = keys("secrets", s.Secret.Name, s.Secret.Items)
			case s.DownwardAPI != nil:
				err = fields(s.DownwardAPI.Items)
			default:
				err = fmt.Errorf("a projected source the test kubelet does not know")
			}
			if err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("a volume type the test kubelet does not know")
}

// token asks the TokenRequest API for a token of the pod's service account
// bound to the pod (void once the pod is deleted), for audience (the
// apiserver's when empty) and expiry (an hour when 0). A new namespace's
// `default` ServiceAccount comes from kube-controller-manager a moment after
// the namespace: a 404 is retried until the pod is stopped.
func (rp *runPod) token(audience string, expiry int64) (string, error) {
	if expiry == 0 {
		expiry = 3600
	}
	spec := map[string]any{"expirationSeconds": expiry,
		"boundObjectRef": map[string]string{"apiVersion": "v1", "kind": "Pod", "name": rp.pod.Metadata.Name, "uid": rp.pod.Metadata.UID}}
	if audience != "" {
		spec["audiences"] = []string{audience}
	}
	req := map[string]any{"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
	path := "/api/v1/namespaces/" + rp.pod.Metadata.Namespace + "/serviceaccounts/" + rp.serviceAccount() + "/token"
	for {
		var out struct {
			Status struct {
				Token string `json:"token"`
			} `json:"status"`
		}
		err := rp.k.do(rp.ctx, http.MethodPost, path, "", req, &out)
		if err == nil {
			return out.Status.Token, nil
		}
		if !isStatus(err, http.StatusNotFound) {
			return "", fmt.Errorf("token request: %w", err)
		}
		select {
		case <-rp.ctx.Done():
			return "", rp.ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// rewrite puts the pod's folder in place of every mount path of c named in
// s: a path that starts at the start of s or after '=', ':', ',' or a
// space, and ends at the end or at '/'.
func (rp *runPod) rewrite(c kubeContainer, s string) string {
	mounts := slices.Clone(c.VolumeMounts)
	// The longest first: /var/run/a/b before /var/run/a.
	slices.SortFunc(mounts, func(a, b kubeMount) int { return len(b.MountPath) - len(a.MountPath) })
	rp.mu.Lock()
	defer rp.mu.Unlock()
	for _, m := range mounts {
		dir, ok := rp.mounts[m.Name]
		if !ok || m.MountPath == "" {
			continue
		}
		if m.SubPath != "" {
			dir = under(dir, m.SubPath)
		}
		s = replacePath(s, strings.TrimSuffix(m.MountPath, "/"), dir)
	}
	return s
}

// replacePath replaces path in s with to where it stands as a path (see
// rewrite).
func replacePath(s, path, to string) string {
	var b strings.Builder
	for {
		i := strings.Index(s, path)
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		end := i + len(path)
		startOK := i == 0 || strings.ContainsRune("=:, ", rune(s[i-1]))
		endOK := end == len(s) || s[end] == '/'
		b.WriteString(s[:i])
		if startOK && endOK {
			b.WriteString(to)
		} else {
			b.WriteString(path)
		}
		s = s[end:]
	}
}

// expandVars expands $(VAR) in s as Kubernetes does: a defined VAR by its
// value, an undefined one left as written, $$ as $.
func expandVars(s string, vars map[string]string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
			continue
		case '(':
			if end := strings.IndexByte(s[i+2:], ')'); end >= 0 {
				name := s[i+2 : i+2+end]
				if v, ok := vars[name]; ok {
					b.WriteString(v)
				} else {
					b.WriteString(s[i : i+3+end])
				}
				i += 2 + end
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func envMap(env []string) map[string]string {
	m := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}
