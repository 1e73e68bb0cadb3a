package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
)

// newDrillCmd builds "zone drill NAME --for D": drain, report where traffic
// goes while drained, and undrain when the time is up or on Ctrl-C. The
// drain carries its own expiry, which the global CP enforces, so a drill
// whose CLI is killed still ends on time.
func newDrillCmd(a *app, scopeFlags func(*cobra.Command, *drainScope)) *cobra.Command {
	var s drainScope
	var length, every time.Duration
	cmd := &cobra.Command{
		Use:   "drill NAME --for DURATION",
		Short: "Drain a zone for a while, report live where traffic goes, then undrain",
		Args:  rangeArgs(1, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s.zone = args[0]
			if length < time.Second {
				return usageError{fmt.Errorf("--for %s: a drill needs --for of at least 1s", length)}
			}
			if every < 100*time.Millisecond {
				return usageError{fmt.Errorf("--every %s: use at least 100ms", every)}
			}
			return a.drill(cmd.Context(), s, length, every)
		},
	}
	scopeFlags(cmd, &s)
	cmd.Flags().DurationVar(&length, "for", 0, "how long the zone stays drained")
	cmd.Flags().DurationVar(&every, "every", time.Second, "how often to report where traffic goes")
	return cmd
}

func (a *app) drill(ctx context.Context, s drainScope, length, every time.Duration) (err error) {
	start := a.now()
	end := start.Add(length)
	if err := a.drain(ctx, s, end); err != nil {
		return err
	}
	// Undrain whatever ends the drill; the command's context may be the
	// one that was cancelled.
	defer func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), requestTimeout)
		defer cancel()
		if _, uerr := a.undrain(uctx, s); uerr != nil {
			fmt.Fprintf(a.stderr, "could not undrain zone %s (%v); the global CP deletes the drain at %s\n", s.zone, uerr, end.Format(time.RFC3339))
			if err == nil {
				err = errReported // the zone is still drained: the drill did not end as it should
			}
			return
		}
		fmt.Fprintf(a.stdout, "drill over after %s\n", a.now().Sub(start).Round(time.Second))
	}()
	tick := time.NewTicker(every)
	defer tick.Stop()
	timer := time.NewTimer(length)
	defer timer.Stop()
	for {
		if err := a.reportTraffic(ctx, s, a.now().Sub(start)); err != nil && ctx.Err() == nil {
			fmt.Fprintf(a.stderr, "cannot read where traffic goes: %v\n", err)
		}
		select {
		case <-ctx.Done():
			fmt.Fprintln(a.stdout, "interrupted")
			return nil
		case <-timer.C:
			return nil
		case <-tick.C:
		}
	}
}
