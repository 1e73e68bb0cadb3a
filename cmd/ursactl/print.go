package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	yamlv3 "go.yaml.in/yaml/v3"

	"github.com/ursamesh/ursa/pkg/api"
)

// printOne prints a single resource in the given output format.
func (a *app) printOne(d api.Descriptor, r api.Resource, output string) error {
	switch output {
	case "json":
		return writeJSON(a.stdout, r)
	case "yaml":
		return writeYAML(a.stdout, []api.Resource{r})
	default:
		return a.writeTable(d, []api.Resource{r})
	}
}

// printList prints a list of resources in the given output format. A YAML
// list is a stream of documents, so that apply accepts it back; a JSON list
// has the shape of the REST API's list.
func (a *app) printList(d api.Descriptor, rs []api.Resource, output string) error {
	switch output {
	case "json":
		if rs == nil {
			rs = []api.Resource{}
		}
		return writeJSON(a.stdout, struct {
			Items []api.Resource `json:"items"`
			Total int            `json:"total"`
		}{rs, len(rs)})
	case "yaml":
		return writeYAML(a.stdout, rs)
	default:
		if len(rs) == 0 {
			fmt.Fprintf(a.stderr, "no %s found\n", d.Plural)
			return nil
		}
		return a.writeTable(d, rs)
	}
}

// writeJSON prints v as indented JSON.
func writeJSON(w io.Writer, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode JSON: %w", err)
	}
	data = append(data, '\n')
	if _, err := w.Write(data); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	return nil
}

// writeYAML prints resources as YAML documents separated by "---". The keys
// keep the order of the JSON form (type, mesh and name first), which
// api.EncodeYAML would sort.
func writeYAML(w io.Writer, rs []api.Resource) error {
	var buf bytes.Buffer
	enc := yamlv3.NewEncoder(&buf)
	enc.SetIndent(2)
	for _, r := range rs {
		data, err := api.EncodeJSON(r)
		if err != nil {
			return fmt.Errorf("encode %s: %w", describe(r), err)
		}
		var doc yamlv3.Node
		if err := yamlv3.Unmarshal(data, &doc); err != nil {
			return fmt.Errorf("encode %s as YAML: %w", describe(r), err)
		}
		plainStyle(&doc)
		if err := enc.Encode(&doc); err != nil {
			return fmt.Errorf("encode %s as YAML: %w", describe(r), err)
		}
	}
	if err := enc.Close(); err != nil {
		return fmt.Errorf("encode YAML: %w", err)
	}
	if _, err := w.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	return nil
}

// plainStyle drops the flow style and quotes that n has from being parsed as
// JSON; the encoder still quotes a string that would otherwise read as
// another type.
func plainStyle(n *yamlv3.Node) {
	n.Style = 0
	for _, c := range n.Content {
		plainStyle(c)
	}
}

// column is one type-specific table column.
type column struct {
	header string
	value  func(api.Resource) string
}

// statusColumns are an insight's: whether its proxy is connected, to which
// replica, its NACKs.
func statusColumns(status func(api.Resource) api.ProxyStatus) []column {
	return []column{
		{"STATUS", func(r api.Resource) string {
			if status(r).Connected {
				return "Online"
			}
			return "Offline"
		}},
		{"CP-INSTANCE", func(r api.Resource) string { return orDash(status(r).Instance) }},
		{"NACKS", func(r api.Resource) string { return strconv.Itoa(status(r).Nacks) }},
	}
}

// columns are the type-specific columns of the table, between NAME and AGE.
var columns = map[string][]column{
	"Mesh": {{"MTLS", func(r api.Resource) string { return onOff(r.(*api.Mesh).MTLSEnabled()) }}},
	"Zone": {{"ENABLED", func(r api.Resource) string { return strconv.FormatBool(r.(*api.Zone).IsEnabled()) }}},
	"ZoneInsight": {
		{"CONNECTED", func(r api.Resource) string { return strconv.FormatBool(r.(*api.ZoneInsight).Connected) }},
		{"CP-VERSION", func(r api.Resource) string { return orDash(r.(*api.ZoneInsight).CPVersion) }},
	},
	"DataplaneInsight":   statusColumns(func(r api.Resource) api.ProxyStatus { return r.(*api.DataplaneInsight).ProxyStatus }),
	"ZoneIngressInsight": statusColumns(func(r api.Resource) api.ProxyStatus { return r.(*api.ZoneIngressInsight).ProxyStatus }),
	"ZoneIngress": {
		{"ZONE", func(r api.Resource) string { return r.(*api.ZoneIngress).Zone }},
		{"ADVERTISED", func(r api.Resource) string {
			n := r.(*api.ZoneIngress).Networking
			if n.AdvertisedAddress == "" {
				return "-"
			}
			return fmt.Sprintf("%s:%d", n.AdvertisedAddress, n.AdvertisedPort)
		}},
	},
	"Dataplane": {
		{"ADDRESS", func(r api.Resource) string { return r.(*api.Dataplane).Networking.Address }},
		{"SERVICES", func(r api.Resource) string {
			var svcs []string
			for _, in := range r.(*api.Dataplane).Networking.Inbound {
				if s := in.Tags[api.TagService]; s != "" && !slices.Contains(svcs, s) {
					svcs = append(svcs, s)
				}
			}
			return orDash(strings.Join(svcs, ","))
		}},
	},
	"TrafficPermission": {
		{"SOURCES", func(r api.Resource) string { return selectors(r.(*api.TrafficPermission).Spec.Sources) }},
		{"DESTINATIONS", func(r api.Resource) string { return selectors(r.(*api.TrafficPermission).Spec.Destinations) }},
		{"ACTION", func(r api.Resource) string { return orDefault(r.(*api.TrafficPermission).Spec.Action, api.ActionAllow) }},
	},
	"TrafficRoute": {
		{"DESTINATION", func(r api.Resource) string { return tags(r.(*api.TrafficRoute).Spec.Destination) }},
		{"SPLIT", func(r api.Resource) string {
			var ws []string
			for _, s := range r.(*api.TrafficRoute).Spec.Split {
				ws = append(ws, strconv.Itoa(s.Weight))
			}
			return orDash(strings.Join(ws, "/"))
		}},
	},
	"Timeout":        policyColumns(),
	"Retry":          policyColumns(),
	"CircuitBreaker": policyColumns(),
	"HealthCheck":    policyColumns(),
	"FaultInjection": policyColumns(),
	"TrafficLog":     policyColumns(),
	"TrafficTrace":   policyColumns(),
	"Failover": {
		{"DESTINATION", func(r api.Resource) string { return tags(r.(*api.Failover).Spec.Destination) }},
		{"ORDER", func(r api.Resource) string { return orDash(strings.Join(r.(*api.Failover).Spec.Order, ",")) }},
	},
	"TokenRevocation": {
		{"TOKEN", func(r api.Resource) string { return r.(*api.TokenRevocation).Token }},
		{"ID", func(r api.Resource) string { return r.(*api.TokenRevocation).ID }},
		{"SUBJECT", func(r api.Resource) string { return orDash(r.(*api.TokenRevocation).Subject) }},
		{"EXPIRES", func(r api.Resource) string { return r.(*api.TokenRevocation).ExpiresAt.UTC().Format(time.RFC3339) }},
	},
	"UserTokenRevocation": {
		{"USER", func(r api.Resource) string { return r.(*api.UserTokenRevocation).User }},
		{"ID", func(r api.Resource) string { return r.(*api.UserTokenRevocation).ID }},
		{"EXPIRES", func(r api.Resource) string { return r.(*api.UserTokenRevocation).ExpiresAt.UTC().Format(time.RFC3339) }},
	},
}

// writeTable prints rs as a table: MESH for a mesh-scoped type, NAME, the
// type's own columns, and AGE.
func (a *app) writeTable(d api.Descriptor, rs []api.Resource) error {
	tw := tabwriter.NewWriter(a.stdout, 0, 0, 3, ' ', 0)
	var header []string
	if d.Scope == api.ScopeMesh {
		header = append(header, "MESH")
	}
	header = append(header, "NAME")
	for _, c := range columns[d.Type] {
		header = append(header, c.header)
	}
	header = append(header, "AGE")
	fmt.Fprintln(tw, strings.Join(header, "\t"))

	now := a.now()
	for _, r := range rs {
		m := r.GetMeta()
		var row []string
		if d.Scope == api.ScopeMesh {
			row = append(row, m.Mesh)
		}
		row = append(row, m.Name)
		for _, c := range columns[d.Type] {
			row = append(row, c.value(r))
		}
		row = append(row, age(m.CreationTime, now))
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	return nil
}

// age prints how long ago t was in its largest whole unit: 5s, 3m, 2h, 4d.
func age(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := max(now.Sub(t), 0)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int64(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int64(d/time.Minute))
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh", int64(d/time.Hour))
	default:
		return fmt.Sprintf("%dd", int64(d/(24*time.Hour)))
	}
}

// tags prints a tag set compactly: the service name alone when that is the
// only tag, else sorted key=value pairs.
func tags(m map[string]string) string {
	if len(m) == 0 {
		return "-"
	}
	if s, ok := m[api.TagService]; ok && len(m) == 1 {
		return s
	}
	var kv []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		kv = append(kv, k+"="+m[k])
	}
	return strings.Join(kv, ",")
}

// selectors prints each selector's tags, separated by "; ".
func selectors(sels []api.Selector) string {
	var out []string
	for _, s := range sels {
		out = append(out, tags(s.Match))
	}
	return orDash(strings.Join(out, "; "))
}

// onOff prints a switch as on or off.
func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// orDash prints "-" for an empty cell.
func orDash(s string) string { return orDefault(s, "-") }

// orDefault returns s, or def when s is empty.
func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// policyColumns are the columns of a source/destination policy.
func policyColumns() []column {
	return []column{
		{"SOURCES", func(r api.Resource) string { src, _ := r.(api.Policy).Selectors(); return selectors(src) }},
		{"DESTINATIONS", func(r api.Resource) string { _, dst := r.(api.Policy).Selectors(); return selectors(dst) }},
	}
}
