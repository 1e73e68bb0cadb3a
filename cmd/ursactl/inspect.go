package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/client"
)

// newInspectCmd builds "inspect zones|dataplanes|services".
func newInspectCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "inspect zones|dataplanes|services",
		Short: "Show the live state of zones, dataplanes or services",
		RunE: func(_ *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageError{fmt.Errorf("inspect needs what to inspect: zones, dataplanes or services")}
			}
			return usageError{fmt.Errorf("cannot inspect %q: use zones, dataplanes or services", args[0])}
		},
	}
	cmd.AddCommand(newInspectDataplanesCmd(a))
	cmd.AddCommand(newInspectServicesCmd(a))
	cmd.AddCommand(&cobra.Command{
		Use:   "zones",
		Short: "Zones with their connection and sync state, as the global CP sees them",
		Args:  rangeArgs(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			zones, err := a.client.List(cmd.Context(), "Zone", "")
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 3, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTATUS\tLAST SYNC\tBEHIND\tNACKS\tVERSION")
			now := time.Now()
			for _, r := range zones {
				z := r.(*api.Zone)
				zi, err := a.client.ZoneInsight(cmd.Context(), z.Name)
				if err != nil && !client.IsNotFound(err) {
					return err
				}
				fmt.Fprintln(tw, zoneRow(z, zi, now))
			}
			return tw.Flush()
		},
	})
	return cmd
}

func zoneRow(z *api.Zone, zi *api.ZoneInsight, now time.Time) string {
	status, lastSync, behind, nacks, version := "Offline", "-", "-", int64(0), "-"
	if zi != nil {
		if zi.Online(now) {
			status = "Online"
		}
		var last time.Time
		for _, s := range zi.Sync {
			nacks += s.ResponsesNacked
			if s.LastAckTime.After(last) {
				last = s.LastAckTime
			}
		}
		if !last.IsZero() {
			lastSync = shortAge(now.Sub(last)) + " ago"
		}
		behind = fmt.Sprint(zi.RevisionBehind)
		if zi.CPVersion != "" {
			version = zi.CPVersion
		}
	}
	if !z.IsEnabled() {
		status = "Disabled"
	}
	return fmt.Sprintf("%s\t%s\t%s\t%s\t%d\t%s", z.Name, status, lastSync, behind, nacks, version)
}

func shortAge(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// newInspectDataplanesCmd builds "inspect dataplanes [-m MESH]", for a zone
// CP's API: each Dataplane with its insight, which the zone CP replica its
// proxy is connected to writes, so every replica shows the same.
func newInspectDataplanesCmd(a *app) *cobra.Command {
	var mesh string
	cmd := &cobra.Command{
		Use:   "dataplanes",
		Short: "Dataplanes with their proxies' xDS connection state (their DataplaneInsights)",
		Args:  rangeArgs(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			dps, err := a.client.List(cmd.Context(), "Dataplane", mesh)
			if err != nil {
				return err
			}
			insights, err := a.client.List(cmd.Context(), "DataplaneInsight", mesh)
			if err != nil {
				return err
			}
			byKey := map[[2]string]*api.DataplaneInsight{}
			for _, r := range insights {
				in := r.(*api.DataplaneInsight)
				byKey[[2]string{in.Mesh, in.Name}] = in
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 3, ' ', 0)
			fmt.Fprintln(tw, "MESH\tNAME\tSTATUS\tKIND\tSINCE\tCP INSTANCE\tNACKS\tLAST NACK")
			now := time.Now()
			for _, r := range dps {
				m := r.GetMeta()
				fmt.Fprintln(tw, dataplaneRow(m.Mesh, m.Name, byKey[[2]string{m.Mesh, m.Name}], now))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVarP(&mesh, "mesh", "m", "", "only this mesh")
	return cmd
}

// dataplaneRow is one line of inspect dataplanes; in is nil for a
// Dataplane whose proxy never connected (it counts as up: a proxyless
// server, or one registered through the API).
func dataplaneRow(mesh, name string, in *api.DataplaneInsight, now time.Time) string {
	if in == nil {
		return fmt.Sprintf("%s\t%s\tNever connected\t-\t-\t-\t0\t-", mesh, name)
	}
	status, since, kind := "Offline", "-", "sidecar"
	if in.Connected {
		status, since = "Online", shortAge(now.Sub(in.ConnectedSince))
	} else if !in.DisconnectedAt.IsZero() {
		since = shortAge(now.Sub(in.DisconnectedAt))
	}
	if in.Proxyless {
		kind = "proxyless"
	}
	nack, instance := in.LastNack, in.Instance
	if nack == "" {
		nack = "-"
	}
	if instance == "" {
		instance = "-"
	}
	return fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s", mesh, name, status, kind, since, instance, in.Nacks, nack)
}
