package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// newGenerateUserTokenCmd builds "generate user-token --name N --group G".
func newGenerateUserTokenCmd(a *app) *cobra.Command {
	var (
		name, group string
		validFor    time.Duration
	)
	cmd := &cobra.Command{
		Use:   "user-token --name NAME --group admin|readonly [--valid-for DURATION]",
		Short: "Generate a token with which a user calls the REST API from another host",
		Long: `User-token asks the control plane (the global one, or a standalone zone) for a
token for user NAME and prints it. Send it with ursactl --token-file F or the
URSA_TOKEN variable. Group admin may do everything; readonly may only read.
A global's tokens work at every zone federated with it. The token is valid for
--valid-for (30 days by default), until it expires or the signing key is rotated
with "ursactl generate user-token-signing-key". Only an admin may ask.`,
		Args: rangeArgs(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case name == "":
				return usageError{fmt.Errorf("generate user-token needs --name NAME")}
			case group == "":
				return usageError{fmt.Errorf("generate user-token needs --group admin or --group readonly")}
			case validFor < 0:
				return usageError{fmt.Errorf("--valid-for %s is negative: give a duration such as 720h", validFor)}
			}
			token, err := a.client.GenerateUserToken(cmd.Context(), name, group, validFor)
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, token)
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "name of the user the token is for (required)")
	cmd.Flags().StringVar(&group, "group", "", "admin (may do everything) or readonly (may only read) (required)")
	cmd.Flags().DurationVar(&validFor, "valid-for", 0, "how long the token is valid, such as 720h (default 30 days)")
	return cmd
}

// newRotateUserTokenKeyCmd builds "generate user-token-signing-key".
func newRotateUserTokenKeyCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "user-token-signing-key",
		Short: "Rotate the key that signs user tokens, revoking every user token issued so far",
		Long: `User-token-signing-key makes the control plane sign user tokens with a new key
and refuse every token signed with an older one: at once on every replica, and in
every zone as soon as the new key reaches it. Every user then needs a new token
(ursactl generate user-token); loopback callers keep working without one.`,
		Args: rangeArgs(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			serial, err := a.client.RotateUserTokenSigningKey(cmd.Context())
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "rotated: user tokens are now signed with key %d; every older user token is revoked\n", serial)
			return nil
		},
	}
}

// newRevokeUserTokenCmd builds "revoke user-token FILE|-".
func newRevokeUserTokenCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "user-token FILE|-",
		Short: "Revoke one user token, leaving every other valid",
		Long: `Revoke user-token makes the control plane (the global one, or a standalone zone)
refuse the user token in FILE ("-" reads it from standard input): at once on every
replica, and in every zone as soon as the revocation reaches it (seconds). Other
tokens stay valid; "ursactl generate user-token-signing-key" revokes them all.
Only an admin may ask (with the admin's own token, --token-file or URSA_TOKEN).`,
		Args: rangeArgs(1, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			data, err := a.readInput(args[0])
			if err != nil {
				return err
			}
			token := strings.TrimSpace(string(data))
			if token == "" {
				return fmt.Errorf("no token in %s", inputName(args[0]))
			}
			r, err := a.client.RevokeUserToken(cmd.Context(), token)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "revoked: the %s token of %s (id %s), which was valid until %s\n", r.Group, r.Name, r.ID, r.ExpiresAt.Format(time.RFC3339))
			return nil
		},
	}
}

// newRevokeTokenCmd builds "revoke KIND-token FILE|-" for the tokens a
// control plane verifies on its streams: zone tokens (the global), dataplane
// and ingress tokens (a zone).
func newRevokeTokenCmd(a *app, kind, where, allCmd string) *cobra.Command {
	return &cobra.Command{
		Use:   kind + "-token FILE|-",
		Short: "Revoke one " + kind + " token, leaving every other valid",
		Long: `Revoke ` + kind + `-token makes ` + where + ` refuse the ` + kind + ` token in FILE
("-" reads it from standard input) from now on, and end the streams it admitted:
at once on the replica asked, within 30 seconds on the others. Other tokens stay
valid; "ursactl ` + allCmd + `" revokes them all. Only an admin may ask.`,
		Args: rangeArgs(1, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			data, err := a.readInput(args[0])
			if err != nil {
				return err
			}
			token := strings.TrimSpace(string(data))
			if token == "" {
				return fmt.Errorf("no token in %s", inputName(args[0]))
			}
			r, err := a.client.RevokeToken(cmd.Context(), kind, token)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "revoked: the %s token for %s (id %s), which was valid until %s\n", r.Token, r.Subject, r.ID, r.ExpiresAt.Format(time.RFC3339))
			return nil
		},
	}
}

// newRevokeCmd builds "revoke".
func newRevokeCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "revoke user-token|zone-token|dataplane-token|ingress-token FILE|-",
		Short: "Revoke one token",
		RunE: func(_ *cobra.Command, args []string) error {
			return usageError{fmt.Errorf("revoke needs what to revoke: user-token, zone-token, dataplane-token or ingress-token")}
		},
	}
	cmd.AddCommand(newRevokeUserTokenCmd(a),
		newRevokeTokenCmd(a, "zone", "the global control plane", "generate zone-token-signing-key"),
		newRevokeTokenCmd(a, "dataplane", "the zone control plane that issued it", "generate dataplane-token-signing-key --mesh MESH"),
		newRevokeTokenCmd(a, "ingress", "the zone control plane that issued it", "generate ingress-token-signing-key"))
	return cmd
}
