package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ursamesh/ursa/pkg/client"
)

// generateWhat lists what generate makes, for its usage errors.
const generateWhat = "zone-token, zone-token-signing-key, dataplane-token, dataplane-token-signing-key, ingress-token, ingress-token-signing-key, user-token or user-token-signing-key"

// newGenerateCmd builds "generate WHAT".
func newGenerateCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "generate zone-token|zone-token-signing-key|dataplane-token|dataplane-token-signing-key|ingress-token|ingress-token-signing-key|user-token|user-token-signing-key",
		Short: "Generate tokens, or rotate the keys that sign them (revoking every token they signed)",
		// Without RunE cobra would print the help and succeed on a
		// misspelt subcommand.
		RunE: func(_ *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageError{fmt.Errorf("generate needs what to generate: %s", generateWhat)}
			}
			return usageError{fmt.Errorf("cannot generate %q: use %s", args[0], generateWhat)}
		},
	}
	cmd.AddCommand(newGenerateZoneTokenCmd(a), newRotateZoneTokenKeyCmd(a), newGenerateDataplaneTokenCmd(a), newGenerateIngressTokenCmd(a))
	cmd.AddCommand(newRotateDataplaneTokenKeyCmd(a), newRotateIngressTokenKeyCmd(a))
	cmd.AddCommand(newGenerateUserTokenCmd(a), newRotateUserTokenKeyCmd(a))
	return cmd
}

// newGenerateZoneTokenCmd builds "generate zone-token --zone NAME".
func newGenerateZoneTokenCmd(a *app) *cobra.Command {
	var (
		zone     string
		validFor time.Duration
	)
	cmd := &cobra.Command{
		Use:   "zone-token --zone NAME [--valid-for DURATION]",
		Short: "Generate a token with which a zone control plane connects to the global one",
		Long: `Zone-token asks the global control plane for a token that lets the zone
control plane of zone NAME connect (ursa-cp zone --zone NAME --zone-token-file F),
and prints it. The token is signed by the global control plane and valid for
--valid-for (one year by default), until it expires or the signing key is
rotated with "ursactl generate zone-token-signing-key".`,
		Args: rangeArgs(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if zone == "" {
				return usageError{fmt.Errorf("generate zone-token needs --zone NAME")}
			}
			if validFor < 0 {
				return usageError{fmt.Errorf("--valid-for %s is negative: give a duration such as 720h", validFor)}
			}
			token, err := a.client.GenerateZoneToken(cmd.Context(), zone, validFor)
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, token)
			return nil
		},
	}
	cmd.Flags().StringVar(&zone, "zone", "", "name of the zone the token is for (required)")
	cmd.Flags().DurationVar(&validFor, "valid-for", 0, "how long the token is valid, such as 720h (default one year)")
	return cmd
}

// newRotateZoneTokenKeyCmd builds "generate zone-token-signing-key".
func newRotateZoneTokenKeyCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "zone-token-signing-key",
		Short: "Rotate the key that signs zone tokens, revoking every zone token issued so far",
		Long: `Zone-token-signing-key makes the global control plane sign zone tokens with a
new key and refuse every token signed with an older one, at once and on every
replica. Every zone then needs a new token (ursactl generate zone-token).`,
		Args: rangeArgs(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			serial, err := a.client.RotateZoneTokenSigningKey(cmd.Context())
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "rotated: zone tokens are now signed with key %d; every older zone token is revoked\n", serial)
			return nil
		},
	}
}

// newRotateDataplaneTokenKeyCmd builds "generate dataplane-token-signing-key
// --mesh M".
func newRotateDataplaneTokenKeyCmd(a *app) *cobra.Command {
	var mesh string
	cmd := &cobra.Command{
		Use:   "dataplane-token-signing-key --mesh MESH",
		Short: "Rotate the key that signs a mesh's dataplane tokens in a zone, revoking every one issued so far",
		Long: `Dataplane-token-signing-key makes a zone control plane (--api-server) revoke every
dataplane token of MESH it issued: it deletes the key that signed them, and the
next token makes a new one. The proxies that connected with one are cut off at
once on this replica, within 30 s on the zone's others, and refused until they
are given a new token (ursactl generate dataplane-token); meanwhile they run on
what they have.`,
		Args: rangeArgs(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if mesh == "" {
				return usageError{fmt.Errorf("generate dataplane-token-signing-key needs --mesh MESH")}
			}
			if err := a.client.RevokeDataplaneTokens(cmd.Context(), mesh); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "rotated: every dataplane token of mesh %s issued so far is revoked\n", mesh)
			return nil
		},
	}
	cmd.Flags().StringVarP(&mesh, "mesh", "m", "", "mesh whose dataplane tokens to revoke (required)")
	return cmd
}

// newRotateIngressTokenKeyCmd builds "generate ingress-token-signing-key".
func newRotateIngressTokenKeyCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "ingress-token-signing-key",
		Short: "Rotate the key that signs a zone's ingress tokens, revoking every one issued so far",
		Long: `Ingress-token-signing-key makes a zone control plane (--api-server) revoke every
ingress token it issued, as dataplane-token-signing-key does dataplane tokens.`,
		Args: rangeArgs(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.client.RevokeIngressTokens(cmd.Context()); err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, "rotated: every ingress token of the zone issued so far is revoked")
			return nil
		},
	}
}

// newGenerateDataplaneTokenCmd builds "generate dataplane-token --mesh M".
func newGenerateDataplaneTokenCmd(a *app) *cobra.Command {
	var (
		req  client.DataplaneTokenRequest
		tags []string
	)
	cmd := &cobra.Command{
		Use:   "dataplane-token --mesh MESH [--service SERVICE] [--tag KEY=VALUE]... [--name NAME] [--valid-for DURATION]",
		Short: "Generate a token with which a proxy connects to its zone control plane",
		Long: `Dataplane-token asks a zone control plane (--api-server) for a token with which a
proxy of MESH connects to it (ursa-dp run --token-file F). The zone refuses a proxy
whose Dataplane, as presented or as registered, is in another mesh, has another
name than --name, or has an inbound that does not run --service or lacks one of
the --tag tags with that value. The token is valid for --valid-for (one year by
default), or until the mesh's signing key in that zone is rotated with
"ursactl generate dataplane-token-signing-key --mesh MESH".`,
		Args: rangeArgs(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if req.Mesh == "" {
				return usageError{fmt.Errorf("generate dataplane-token needs --mesh MESH")}
			}
			if req.ValidFor < 0 {
				return usageError{fmt.Errorf("--valid-for %s is negative: give a duration such as 720h", req.ValidFor)}
			}
			parsed, err := parseTags(tags)
			if err != nil {
				return usageError{err}
			}
			req.Tags = parsed
			token, err := a.client.GenerateDataplaneToken(cmd.Context(), req)
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, token)
			return nil
		},
	}
	cmd.Flags().StringVarP(&req.Mesh, "mesh", "m", "", "mesh the proxy belongs to (required)")
	cmd.Flags().StringVar(&req.Service, "service", "", "service every inbound of the proxy runs; empty allows any of the mesh")
	cmd.Flags().StringArrayVar(&tags, "tag", nil, "KEY=VALUE: a tag every inbound must carry with that value (repeatable)")
	cmd.Flags().StringVar(&req.Name, "name", "", "name of the one Dataplane the token is for; empty allows any")
	cmd.Flags().DurationVar(&req.ValidFor, "valid-for", 0, "how long the token is valid, such as 720h (default one year)")
	return cmd
}

// parseTags reads --tag KEY=VALUE flags; the server checks the names.
func parseTags(flags []string) (map[string]string, error) {
	if len(flags) == 0 {
		return nil, nil
	}
	tags := map[string]string{}
	for _, f := range flags {
		k, v, ok := strings.Cut(f, "=")
		switch {
		case !ok || k == "" || v == "":
			return nil, fmt.Errorf("--tag %q: use KEY=VALUE, such as --tag version=v1", f)
		case tags[k] != "" && tags[k] != v:
			return nil, fmt.Errorf("--tag %s is given twice, as %s and %s", k, tags[k], v)
		}
		tags[k] = v
	}
	return tags, nil
}

// newGenerateIngressTokenCmd builds "generate ingress-token --zone Z".
func newGenerateIngressTokenCmd(a *app) *cobra.Command {
	var (
		zone     string
		validFor time.Duration
	)
	cmd := &cobra.Command{
		Use:   "ingress-token --zone ZONE [--valid-for DURATION]",
		Short: "Generate a token with which a zone ingress connects to its zone control plane",
		Long: `Ingress-token asks the zone control plane of ZONE (--api-server) for a token with
which that zone's ingress connects to it (ursa-dp ingress --token-file F). It is
signed with the zone's own ingress key: it runs an ingress of ZONE only, never a
sidecar, and a dataplane token never runs an ingress. It is valid for --valid-for
(one year by default).`,
		Args: rangeArgs(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if zone == "" {
				return usageError{fmt.Errorf("generate ingress-token needs --zone ZONE")}
			}
			if validFor < 0 {
				return usageError{fmt.Errorf("--valid-for %s is negative: give a duration such as 720h", validFor)}
			}
			token, err := a.client.GenerateIngressToken(cmd.Context(), zone, validFor)
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, token)
			return nil
		},
	}
	cmd.Flags().StringVar(&zone, "zone", "", "zone of the ingress, the zone of the control plane asked (required)")
	cmd.Flags().DurationVar(&validFor, "valid-for", 0, "how long the token is valid, such as 720h (default one year)")
	return cmd
}
