package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/client"
)

// drainScope is what a drain covers: a zone, and optionally one mesh and
// one service.
type drainScope struct {
	zone, mesh, service string
}

func newZoneCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "zone drain|undrain|drill|rotate-ca",
		Short: "Move traffic off a zone and back, by writing ordinary policies at the global CP",
		Args:  rangeArgs(0, 0),
		RunE: func(*cobra.Command, []string) error {
			return usageError{errors.New("zone needs a subcommand: drain, undrain, drill or rotate-ca")}
		},
	}
	scopeFlags := func(c *cobra.Command, s *drainScope) {
		c.Flags().StringVarP(&s.mesh, "mesh", "m", "", "only this mesh (default: every mesh)")
		c.Flags().StringVar(&s.service, "service", "", "only this service (default: every service)")
	}

	var drain drainScope
	var drainFor time.Duration
	drainCmd := &cobra.Command{
		Use:   "drain NAME",
		Short: "Move callers' traffic off a zone: it then takes load only when no other zone can",
		Long: "drain writes, for each mesh, a Failover that lists the zone as drained (labelled " + api.LabelMadeBy + "=" + api.MadeByDrain +
			"): in every caller, in every zone, the zone's endpoints come after all others'. Your own Failovers and TrafficRoutes stay as they are. " +
			"undrain deletes what drain wrote. With --for, the global CP deletes the drain itself when the time is up.",
		Args: rangeArgs(1, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			drain.zone = args[0]
			var until time.Time
			if drainFor != 0 {
				if drainFor < time.Second {
					return usageError{fmt.Errorf("--for %s: use at least 1s", drainFor)}
				}
				until = a.now().Add(drainFor)
			}
			return a.drain(cmd.Context(), drain, until)
		},
	}
	scopeFlags(drainCmd, &drain)
	drainCmd.Flags().DurationVar(&drainFor, "for", 0, "undrain automatically after this long (enforced by the global CP)")

	var undrain drainScope
	undrainCmd := &cobra.Command{
		Use:   "undrain NAME",
		Short: "Undo drain: delete the policies it wrote for a zone",
		Args:  rangeArgs(1, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			undrain.zone = args[0]
			n, err := a.undrain(cmd.Context(), undrain)
			if err == nil && n == 0 {
				fmt.Fprintf(a.stdout, "zone %s is not drained\n", undrain.zone)
			}
			return err
		},
	}
	scopeFlags(undrainCmd, &undrain)

	cmd.AddCommand(drainCmd, undrainCmd, newDrillCmd(a, scopeFlags), newRotateCACmd(a))
	return cmd
}

// drainName names the Failover a drain writes.
func drainName(s drainScope) string {
	name := "drain-" + s.zone
	if s.service != "" {
		svc := strings.Trim(nonName.ReplaceAllString(strings.ToLower(s.service), "-"), "-")
		name += "." + svc
	}
	return name
}

var nonName = regexp.MustCompile(`[^a-z0-9-]+`)

// drainMeshes is the meshes a drain covers.
func (a *app) drainMeshes(ctx context.Context, s drainScope) ([]string, error) {
	if s.mesh != "" {
		return []string{s.mesh}, nil
	}
	meshes, err := a.client.List(ctx, "Mesh", "")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range meshes {
		out = append(out, m.GetMeta().Name)
	}
	return out, nil
}

// drain writes the drain Failovers of s, expiring at until when it is set.
func (a *app) drain(ctx context.Context, s drainScope, until time.Time) error {
	if _, err := a.client.Get(ctx, "Zone", "", s.zone); err != nil {
		if client.IsNotFound(err) {
			return fmt.Errorf("zone %q does not exist at %s", s.zone, a.apiServer)
		}
		return err
	}
	meshes, err := a.drainMeshes(ctx, s)
	if err != nil {
		return err
	}
	if len(meshes) == 0 {
		return errors.New("there is no mesh to drain")
	}
	service := s.service
	if service == "" {
		service = "*"
	}
	for _, mesh := range meshes {
		f := &api.Failover{
			Meta: api.Meta{Type: "Failover", Mesh: mesh, Name: drainName(s), Labels: map[string]string{
				api.LabelMadeBy: api.MadeByDrain, api.LabelDrainZone: s.zone}},
			Spec: api.FailoverSpec{Destination: map[string]string{api.TagService: service}, Drained: []string{s.zone}},
		}
		if !until.IsZero() {
			f.Labels[api.LabelExpires] = strconv.FormatInt(until.Unix(), 10)
		}
		if err := api.Validate(f); err != nil {
			return err
		}
		if _, _, err := a.client.Put(ctx, f); err != nil {
			return fmt.Errorf("mesh %s: %w", mesh, err)
		}
		what := "every service"
		if s.service != "" {
			what = s.service
		}
		fmt.Fprintf(a.stdout, "failover %s/%s written: %s in mesh %s moves off zone %s", mesh, f.Name, what, mesh, s.zone)
		if !until.IsZero() {
			fmt.Fprintf(a.stdout, " until %s", until.Format(time.RFC3339))
		}
		fmt.Fprintln(a.stdout)
	}
	return nil
}

// undrain deletes the drain Failovers of s and returns how many.
func (a *app) undrain(ctx context.Context, s drainScope) (int, error) {
	meshes, err := a.drainMeshes(ctx, s)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, mesh := range meshes {
		fs, err := a.client.List(ctx, "Failover", mesh)
		if err != nil {
			return n, fmt.Errorf("mesh %s: %w", mesh, err)
		}
		for _, r := range fs {
			f := r.(*api.Failover)
			if f.Labels[api.LabelMadeBy] != api.MadeByDrain || f.Labels[api.LabelDrainZone] != s.zone {
				continue
			}
			if s.service != "" && f.Spec.Destination[api.TagService] != s.service {
				continue
			}
			if err := a.client.Delete(ctx, "Failover", mesh, f.Name); err != nil && !client.IsNotFound(err) {
				return n, fmt.Errorf("mesh %s: %w", mesh, err)
			}
			n++
			fmt.Fprintf(a.stdout, "failover %s/%s deleted: zone %s takes traffic again\n", mesh, f.Name, s.zone)
		}
	}
	return n, nil
}

// sortedZones lists a map's zones in order.
func sortedZones[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }
