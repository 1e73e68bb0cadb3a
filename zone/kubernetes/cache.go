package kubernetes

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
)

// cache holds the cluster's objects as the controller last saw them.
type cache struct {
	mu         sync.RWMutex
	namespaces map[string]*Namespace
	pods       map[string]map[string]*Pod // namespace → name →
	services   map[string]map[string]Service
	nodes      map[string]*Node
}

func newCache() *cache {
	return &cache{namespaces: map[string]*Namespace{}, pods: map[string]map[string]*Pod{},
		services: map[string]map[string]Service{}, nodes: map[string]*Node{}}
}

// inputs is what one pod's translation reads.
type inputs struct {
	pod      *Pod
	ns       *Namespace
	services []Service
	nodes    []*Node
}

func (c *cache) inputs(ns, name string) inputs {
	c.mu.RLock()
	defer c.mu.RUnlock()
	in := inputs{pod: c.pods[ns][name], ns: c.namespaces[ns]}
	in.services = slices.Collect(maps.Values(c.services[ns]))
	if in.pod != nil && in.pod.Metadata.Labels[LabelIngress] == "enabled" {
		in.nodes = slices.Collect(maps.Values(c.nodes))
	}
	return in
}

func (c *cache) podCount() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	n := 0
	for _, p := range c.pods {
		n += len(p)
	}
	return n
}

func (c *cache) allPods() []string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out []string
	for ns, pods := range c.pods {
		for name := range pods {
			out = append(out, podKey(ns, name))
		}
	}
	return out
}

// podsOf returns the keys of a namespace's pods; caller holds mu.
func (c *cache) podsOf(ns string, out []string) []string {
	for name := range c.pods[ns] {
		out = append(out, podKey(ns, name))
	}
	return out
}

// ingressPods returns the keys of the system namespace's ingress pods;
// caller holds mu.
func (c *cache) ingressPods(system string) []string {
	var out []string
	for name, p := range c.pods[system] {
		if p.Metadata.Labels[LabelIngress] == "enabled" {
			out = append(out, podKey(system, name))
		}
	}
	return out
}

// apply records a change and returns the keys of the pods whose
// translation it may change. An object that does not decode is left out
// (and, for a whole list, only it).
func (c *cache) apply(ch change, system string) ([]string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ch.synced {
		return c.replace(ch, system)
	}
	var meta struct {
		Metadata ObjectMeta `json:"metadata"`
	}
	if err := json.Unmarshal(ch.obj, &meta); err != nil {
		return nil, fmt.Errorf("decode %s: %w", ch.kind, err)
	}
	m := meta.Metadata
	switch ch.kind {
	case "pods":
		key := podKey(m.Namespace, m.Name)
		if ch.deleted {
			delete(c.pods[m.Namespace], m.Name)
			return []string{key}, nil
		}
		p, err := DecodePod(ch.obj)
		if err != nil {
			// Unreadable now: translated as gone, rather than as it was.
			delete(c.pods[m.Namespace], m.Name)
			return []string{key}, err
		}
		c.putPod(p)
		return []string{key}, nil
	case "services":
		if ch.deleted {
			delete(c.services[m.Namespace], m.Name)
		} else if s, err := DecodeService(ch.obj); err != nil {
			delete(c.services[m.Namespace], m.Name)
			return c.podsOf(m.Namespace, nil), err
		} else {
			c.putService(*s)
		}
		return c.podsOf(m.Namespace, nil), nil
	case "namespaces":
		if ch.deleted {
			delete(c.namespaces, m.Name)
		} else if n, err := DecodeNamespace(ch.obj); err != nil {
			delete(c.namespaces, m.Name)
			return c.podsOf(m.Name, nil), err
		} else {
			c.namespaces[m.Name] = n
		}
		return c.podsOf(m.Name, nil), nil
	case "nodes":
		if ch.deleted {
			delete(c.nodes, m.Name)
		} else {
			var n Node
			if err := decode("node", ch.obj, &n); err != nil {
				delete(c.nodes, m.Name)
				return c.ingressPods(system), err
			}
			c.nodes[m.Name] = &n
		}
		return c.ingressPods(system), nil
	}
	return nil, fmt.Errorf("unknown kind %q", ch.kind)
}

func (c *cache) putPod(p *Pod) {
	ns := p.Metadata.Namespace
	if c.pods[ns] == nil {
		c.pods[ns] = map[string]*Pod{}
	}
	c.pods[ns][p.Metadata.Name] = p
}

func (c *cache) putService(s Service) {
	ns := s.Metadata.Namespace
	if c.services[ns] == nil {
		c.services[ns] = map[string]Service{}
	}
	c.services[ns][s.Metadata.Name] = s
}

// replace sets a kind's objects to a whole list. It returns every pod's key
// (before and after): a relist is rare, and a reconcile that changes
// nothing writes nothing.
func (c *cache) replace(ch change, system string) ([]string, error) {
	var errs []error
	var keys []string
	switch ch.kind {
	case "pods":
		keys = c.allKeys()
		c.pods = map[string]map[string]*Pod{}
		for _, raw := range ch.list {
			p, err := DecodePod(raw)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			c.putPod(p)
		}
	case "services":
		c.services = map[string]map[string]Service{}
		for _, raw := range ch.list {
			s, err := DecodeService(raw)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			c.putService(*s)
		}
	case "namespaces":
		c.namespaces = map[string]*Namespace{}
		for _, raw := range ch.list {
			n, err := DecodeNamespace(raw)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			c.namespaces[n.Metadata.Name] = n
		}
	case "nodes":
		c.nodes = map[string]*Node{}
		for _, raw := range ch.list {
			var n Node
			if err := decode("node", raw, &n); err != nil {
				errs = append(errs, err)
				continue
			}
			c.nodes[n.Metadata.Name] = &n
		}
		return c.ingressPods(system), errors.Join(errs...)
	default:
		return nil, fmt.Errorf("unknown kind %q", ch.kind)
	}
	keys = append(keys, c.allKeys()...)
	if len(errs) > 3 {
		errs = append(errs[:3], fmt.Errorf("and %d more", len(errs)-3))
	}
	return keys, errors.Join(errs...)
}

func (c *cache) allKeys() []string {
	var out []string
	for ns := range c.pods {
		out = c.podsOf(ns, out)
	}
	return out
}

// splitKey returns a pod key's namespace and name.
func splitKey(key string) (string, string) {
	ns, name, _ := strings.Cut(key, "/")
	return ns, name
}
