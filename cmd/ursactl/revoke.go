package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

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
// and ingress tokens (a zone). where says which control plane, and when its
// replicas end the token's streams.
func newRevokeTokenCmd(a *app, kind, where, allCmd string) *cobra.Command {
	return &cobra.Command{
		Use:   kind + "-token FILE|-",
		Short: "Revoke one " + kind + " token, leaving every other valid",
		Long: `Revoke ` + kind + `-token makes ` + where + `. Other tokens stay valid;
"ursactl ` + allCmd + `" revokes them all. Only an admin may ask.`,
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
		newRevokeTokenCmd(a, "zone", `the global control plane refuse the zone token in FILE ("-" reads
it from standard input) from now on, and end the KDS streams it admitted, at once
on every replica`, "generate zone-token-signing-key"),
		newRevokeTokenCmd(a, "dataplane", `the zone control plane that issued the dataplane token in FILE
("-" reads it from standard input) refuse it from now on, and end the streams of
the proxies that use it: at once on the replica asked, within 30 seconds on the
others. A Kubernetes zone's pods connect with their service-account tokens, which
the API server checks: delete the pod instead`, "generate dataplane-token-signing-key --mesh MESH"),
		newRevokeTokenCmd(a, "ingress", `the zone control plane that issued the ingress token in FILE
("-" reads it from standard input) refuse it from now on, and end the streams of
the ingresses that use it: at once on the replica asked, within 30 seconds on the
others`, "generate ingress-token-signing-key"))
	return cmd
}
