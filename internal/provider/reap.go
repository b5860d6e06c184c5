package provider

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-log/tflog"

	"github.com/postgraas/terraform-provider-postgraas/internal/instance"
)

// reapExpired removes up to limit expired instances as the provider
// starts, within instance.DefaultReapBudget. It never fails the run: each
// removed instance is a warning naming it, an instance that could not be
// removed is a warning too (the next run tries again), and a meta DB that
// cannot be reached is only logged, since every operation that needs it
// reports that itself (and a configuration may create its meta DB).
func reapExpired(ctx context.Context, svc *instance.Service, limit int, connectTimeout time.Duration, diags *diag.Diagnostics) {
	if limit <= 0 {
		return
	}
	start := time.Now()
	// The look for expired instances gets one connect timeout, at most
	// instance.MaxReapLookup: a meta DB that does not answer is met by the
	// run's operations too, each after its connect timeout.
	lookup := min(connectTimeout, instance.MaxReapLookup)
	reaped, err := svc.Reap(ctx, limit, lookup, instance.DefaultReapBudget)
	tflog.Debug(ctx, "looked for expired instances", map[string]any{"took": time.Since(start).String(), "removed": len(reaped)})
	for _, r := range reaped {
		diags.AddWarning("Expired instance removed",
			fmt.Sprintf("Instance %q (id %d, %s backend%s) expired at %s and was removed by this run, its sessions "+
				"terminated: expiry is its owner's consent. A configuration that manages it sees it as removed outside "+
				"Terraform and creates it anew on apply.", r.Name, r.ID, r.Backend, labelsText(r.Labels, ", labels "),
				r.ExpiresAt.UTC().Format(time.RFC3339)))
	}
	var failed *instance.ReapFailedError
	switch {
	case err == nil:
	case errors.As(err, &failed):
		diags.AddWarning("Expired instances not removed",
			fmt.Sprintf("This run could not remove every expired instance; they stay recorded, and the next run (or "+
				"the provider binary's reap command) tries again: %s.", err))
	default:
		tflog.Warn(ctx, "could not look for expired instances", map[string]any{"error": err.Error()})
	}
}

// labelsText writes labels as "prefix k=v,k=v", sorted; "" for none.
func labelsText(labels map[string]string, prefix string) string {
	if len(labels) == 0 {
		return ""
	}
	pairs := make([]string, 0, len(labels))
	for k, v := range labels {
		pairs = append(pairs, k+"="+v)
	}
	sort.Strings(pairs)
	return prefix + strings.Join(pairs, ",")
}

// DefaultReapCommandLimit is how many expired instances the reap command
// removes at most unless told otherwise.
const DefaultReapCommandLimit = 100

// Reap is the provider binary's reap command: it configures the provider
// from the environment alone, exactly as a provider block without
// attributes (POSTGRAAS_*, DOCKER_HOST, KUBECONFIG, ...), and removes up to
// limit expired instances within budget, writing one line per instance to
// out (dryRun: lists them and removes nothing). Configuration warnings go
// to errOut. The error is non-nil when anything failed.
func Reap(ctx context.Context, limit int, dryRun bool, budget time.Duration, out, errOut io.Writer) error {
	var diags diag.Diagnostics
	settings, known := resolveSettings(ctx, providerModel{}, &diags)
	var c *client
	if !diags.HasError() && known {
		c = buildClient(settings, &diags)
	}
	for _, d := range diags {
		if d.Severity() == diag.SeverityWarning {
			fmt.Fprintf(errOut, "warning: %s: %s\n", d.Summary(), d.Detail())
		}
	}
	if diags.HasError() || c == nil {
		var msgs []string
		for _, d := range diags.Errors() {
			msgs = append(msgs, d.Summary()+": "+d.Detail())
		}
		return fmt.Errorf("configuring the provider from the environment: %s", strings.Join(msgs, "; "))
	}
	defer c.svc.Close()
	line := func(verb string, r instance.Reaped) {
		fmt.Fprintf(out, "%s\t%d\t%s\t%s\texpired %s%s\n", verb, r.ID, r.Name, r.Backend,
			r.ExpiresAt.UTC().Format(time.RFC3339), labelsText(r.Labels, "\tlabels "))
	}
	if dryRun {
		ctx, cancel := context.WithTimeout(ctx, budget)
		defer cancel()
		expired, err := c.svc.Expired(ctx, limit)
		for _, r := range expired {
			line("expired", r)
		}
		return err
	}
	reaped, err := c.svc.Reap(ctx, limit, budget, budget)
	for _, r := range reaped {
		line("removed", r)
	}
	return err
}
