package kube

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"sigs.k8s.io/yaml"
)

// Config says where the apiserver is and how to authenticate to it.
type Config struct {
	// Server is the apiserver's base URL, https://HOST:PORT.
	Server string
	// CAPEM is the PEM of the CA the apiserver's certificate must chain to.
	CAPEM []byte
	// Token is a bearer token; TokenFile, when set, is re-read every minute
	// (rotated service-account tokens) and wins over Token.
	Token     string
	TokenFile string
	// CertPEM and KeyPEM are a client certificate, instead of or besides a
	// token.
	CertPEM, KeyPEM []byte
	// Namespace is the kubeconfig context's namespace, or the pod's own in
	// a cluster; "" when the kubeconfig names none.
	Namespace string
}

// Validate says what is missing or wrong.
func (c *Config) Validate() error {
	u, err := url.Parse(c.Server)
	switch {
	case c.Server == "":
		return errors.New("kube: no server URL")
	case err != nil:
		return fmt.Errorf("kube: server URL %q: %w", c.Server, err)
	case u.Scheme != "https" || u.Host == "":
		return fmt.Errorf("kube: server URL %q must be https://HOST[:PORT]", c.Server)
	case len(c.CAPEM) == 0:
		return errors.New("kube: no certificate authority for the server (certificate-authority or certificate-authority-data)")
	case c.Token == "" && c.TokenFile == "" && len(c.CertPEM) == 0:
		return errors.New("kube: no credentials (token, tokenFile or client-certificate)")
	case len(c.CertPEM) > 0 && len(c.KeyPEM) == 0:
		return errors.New("kube: a client certificate without its key")
	}
	return nil
}

// kubeconfig is the part of a kubeconfig file this package understands.
type kubeconfig struct {
	CurrentContext string `json:"current-context"`
	Clusters       []struct {
		Name    string `json:"name"`
		Cluster struct {
			Server                   string `json:"server"`
			CertificateAuthority     string `json:"certificate-authority"`
			CertificateAuthorityData string `json:"certificate-authority-data"`
			InsecureSkipTLSVerify    bool   `json:"insecure-skip-tls-verify"`
		} `json:"cluster"`
	} `json:"clusters"`
	Users []struct {
		Name string `json:"name"`
		User struct {
			Token                 string `json:"token"`
			TokenFile             string `json:"tokenFile"`
			ClientCertificate     string `json:"client-certificate"`
			ClientCertificateData string `json:"client-certificate-data"`
			ClientKey             string `json:"client-key"`
			ClientKeyData         string `json:"client-key-data"`
			Exec                  any    `json:"exec"`
			AuthProvider          any    `json:"auth-provider"`
		} `json:"user"`
	} `json:"users"`
	Contexts []struct {
		Name    string `json:"name"`
		Context struct {
			Cluster   string `json:"cluster"`
			User      string `json:"user"`
			Namespace string `json:"namespace"`
		} `json:"context"`
	} `json:"contexts"`
}

// LoadKubeconfig reads a kubeconfig file and returns its current context's
// cluster and user. Relative file paths in it are relative to the file.
func LoadKubeconfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("kube: read kubeconfig: %w", err)
	}
	cfg, err := ParseKubeconfig(b, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	return cfg, nil
}

// ParseKubeconfig parses a kubeconfig's bytes; dir resolves relative paths
// of the files it names. It supports tokens, token files and client
// certificates, not exec plugins or auth providers, and refuses
// insecure-skip-tls-verify.
func ParseKubeconfig(data []byte, dir string) (*Config, error) {
	var kc kubeconfig
	if err := yaml.Unmarshal(data, &kc); err != nil {
		return nil, fmt.Errorf("kube: parse kubeconfig: %w", err)
	}
	if kc.CurrentContext == "" {
		return nil, errors.New("kube: kubeconfig has no current-context")
	}
	ci := -1
	for i := range kc.Contexts {
		if kc.Contexts[i].Name == kc.CurrentContext {
			ci = i
		}
	}
	if ci < 0 {
		return nil, fmt.Errorf("kube: kubeconfig has no context %q (its current-context)", kc.CurrentContext)
	}
	ctx := kc.Contexts[ci].Context
	cfg := &Config{Namespace: ctx.Namespace}
	found := false
	for _, c := range kc.Clusters {
		if c.Name != ctx.Cluster {
			continue
		}
		found = true
		if c.Cluster.InsecureSkipTLSVerify {
			return nil, fmt.Errorf("kube: cluster %q sets insecure-skip-tls-verify: give its CA instead", c.Name)
		}
		cfg.Server = c.Cluster.Server
		var err error
		if cfg.CAPEM, err = dataOrFile("certificate-authority", c.Cluster.CertificateAuthorityData, c.Cluster.CertificateAuthority, dir); err != nil {
			return nil, err
		}
	}
	if !found {
		return nil, fmt.Errorf("kube: kubeconfig has no cluster %q (context %q)", ctx.Cluster, kc.CurrentContext)
	}
	found = false
	for _, u := range kc.Users {
		if u.Name != ctx.User {
			continue
		}
		found = true
		if u.User.Exec != nil || u.User.AuthProvider != nil {
			return nil, fmt.Errorf("kube: user %q authenticates by exec or auth-provider, which Ursa does not support: use a token or a client certificate", u.Name)
		}
		cfg.Token = u.User.Token
		if u.User.TokenFile != "" {
			cfg.TokenFile = resolve(u.User.TokenFile, dir)
		}
		var err error
		if cfg.CertPEM, err = dataOrFile("client-certificate", u.User.ClientCertificateData, u.User.ClientCertificate, dir); err != nil {
			return nil, err
		}
		if cfg.KeyPEM, err = dataOrFile("client-key", u.User.ClientKeyData, u.User.ClientKey, dir); err != nil {
			return nil, err
		}
	}
	if !found {
		return nil, fmt.Errorf("kube: kubeconfig has no user %q (context %q)", ctx.User, kc.CurrentContext)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

func dataOrFile(field, data, file, dir string) ([]byte, error) {
	if data != "" {
		b, err := base64.StdEncoding.DecodeString(data)
		if err != nil {
			return nil, fmt.Errorf("kube: %s-data is not base64: %w", field, err)
		}
		return b, nil
	}
	if file == "" {
		return nil, nil
	}
	b, err := os.ReadFile(resolve(file, dir))
	if err != nil {
		return nil, fmt.Errorf("kube: %s: %w", field, err)
	}
	return b, nil
}

func resolve(path, dir string) string {
	if filepath.IsAbs(path) || dir == "" {
		return path
	}
	return filepath.Join(dir, path)
}

// ServiceAccountDir is where a pod finds its service account's token, the
// cluster's CA and its namespace.
const ServiceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// InCluster returns the config of a process in a pod: the apiserver from
// KUBERNETES_SERVICE_HOST and _PORT, credentials and namespace from
// ServiceAccountDir.
func InCluster() (*Config, error) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return nil, errors.New("kube: not in a cluster (KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT unset): give a kubeconfig")
	}
	ca, err := os.ReadFile(filepath.Join(ServiceAccountDir, "ca.crt"))
	if err != nil {
		return nil, fmt.Errorf("kube: in-cluster CA: %w", err)
	}
	ns, err := os.ReadFile(filepath.Join(ServiceAccountDir, "namespace"))
	if err != nil {
		return nil, fmt.Errorf("kube: in-cluster namespace: %w", err)
	}
	cfg := &Config{Server: "https://" + net.JoinHostPort(host, port), CAPEM: ca,
		TokenFile: filepath.Join(ServiceAccountDir, "token"), Namespace: strings.TrimSpace(string(ns))}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}
