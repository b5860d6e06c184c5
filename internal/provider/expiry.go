package provider

import (
	"context"
	"fmt"
	"regexp"
	"time"

	"github.com/hashicorp/terraform-plugin-framework-validators/mapvalidator"
	"github.com/hashicorp/terraform-plugin-framework-validators/stringvalidator"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"
)

// Label limits: keys as Kubernetes-like names, values short single-line
// strings, a few dozen of them; what a CI job needs to find its instances.
const (
	maxLabels          = 64
	maxLabelValueBytes = 256
	// maxExpiresAfter is ten years: anything longer is "never".
	maxExpiresAfter = 10 * 365 * 24 * time.Hour
)

var labelKeyRegexp = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9_.\-/]{0,61}[A-Za-z0-9])?$`)

const labelsDescription = "Labels of the instance, such as `{ pipeline = \"1234\", branch = \"main\" }`: at most 64; " +
	"keys of 1 to 63 letters, digits, `_`, `.`, `-` and `/`, starting and ending with a letter or digit; values of " +
	"at most 256 bytes without control characters."

func labelsValidators() []validator.Map {
	return []validator.Map{
		mapvalidator.SizeAtMost(maxLabels),
		mapvalidator.KeysAre(stringvalidator.RegexMatches(labelKeyRegexp,
			"must be 1 to 63 letters, digits, '_', '.', '-' and '/', starting and ending with a letter or digit")),
		mapvalidator.ValueStringsAre(
			stringvalidator.LengthAtMost(maxLabelValueBytes),
			stringvalidator.RegexMatches(noControlRegexp, "must not contain NUL or other control characters"),
		),
	}
}

// rfc3339Validator accepts an RFC 3339 time ("2030-01-31T18:00:00Z").
type rfc3339Validator struct{}

func (rfc3339Validator) Description(context.Context) string {
	return "must be an RFC 3339 time such as \"2030-01-31T18:00:00Z\""
}

func (v rfc3339Validator) MarkdownDescription(ctx context.Context) string { return v.Description(ctx) }

func (v rfc3339Validator) ValidateString(ctx context.Context, req validator.StringRequest, resp *validator.StringResponse) {
	if req.ConfigValue.IsNull() || req.ConfigValue.IsUnknown() {
		return
	}
	if _, err := time.Parse(time.RFC3339, req.ConfigValue.ValueString()); err != nil {
		resp.Diagnostics.AddAttributeError(req.Path, "Invalid time",
			fmt.Sprintf("Attribute %s %s, got %q.", req.Path, v.Description(ctx), req.ConfigValue.ValueString()))
	}
}

// parseTime reads a validated RFC 3339 attribute; zero when null, unknown
// or invalid.
func parseTime(v types.String) time.Time {
	if v.IsNull() || v.IsUnknown() {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339, v.ValueString())
	if err != nil {
		return time.Time{}
	}
	return t
}

// expiresValue is the expires_at to show for a row expiring at t (zero:
// never): the current value when it names the same instant (a configured
// "+02:00" or fractional spelling stays as written), else t in UTC.
func expiresValue(current types.String, t time.Time) types.String {
	if t.IsZero() {
		return types.StringNull()
	}
	// The meta DB keeps microseconds.
	if c := parseTime(current); !c.IsZero() && c.Truncate(time.Microsecond).Equal(t) {
		return current
	}
	return types.StringValue(t.UTC().Format(time.RFC3339))
}

// labelsOf converts a planned labels map; nil when null.
func labelsOf(ctx context.Context, v types.Map) (map[string]string, diag.Diagnostics) {
	if v.IsNull() || v.IsUnknown() {
		return nil, nil
	}
	out := map[string]string{}
	diags := v.ElementsAs(ctx, &out, false)
	return out, diags
}

// labelsFromState converts labels kept in state, which are always known.
func labelsFromState(v types.Map) map[string]string {
	out, _ := labelsOf(context.Background(), v)
	return out
}

// labelsValue is a row's labels as the attribute: null when it has none.
func labelsValue(labels map[string]string) types.Map {
	if labels == nil {
		return types.MapNull(types.StringType)
	}
	m, _ := types.MapValueFrom(context.Background(), types.StringType, labels) // strings always convert
	return m
}

// warnIfExpired warns when a planned expiry has passed already: the
// instance is then removed by the next run that uses the meta DB.
func warnIfExpired(v types.String, diags *diag.Diagnostics) {
	t := parseTime(v)
	if t.IsZero() || t.After(time.Now()) {
		return
	}
	diags.AddAttributeWarning(path.Root("expires_at"), "Instance expiry in the past",
		fmt.Sprintf("The instance's expiry, %s, has passed: the next provider run that uses this meta DB (any plan, "+
			"apply or reap) removes the instance, and the apply after that creates it anew.", v.ValueString()))
}

// planExistingExpiry plans expires_at of an existing instance: as
// configured; else created_at plus expires_after; else null (never).
func planExistingExpiry(ctx context.Context, req resource.ModifyPlanRequest, resp *resource.ModifyPlanResponse) {
	var after, configured, created, current types.String
	resp.Diagnostics.Append(req.Config.GetAttribute(ctx, path.Root("expires_after"), &after)...)
	resp.Diagnostics.Append(req.Config.GetAttribute(ctx, path.Root("expires_at"), &configured)...)
	resp.Diagnostics.Append(req.State.GetAttribute(ctx, path.Root("created_at"), &created)...)
	resp.Diagnostics.Append(req.State.GetAttribute(ctx, path.Root("expires_at"), &current)...)
	if resp.Diagnostics.HasError() {
		return
	}
	var planned types.String
	switch {
	case !configured.IsNull():
		planned = configured
	case after.IsUnknown():
		planned = types.StringUnknown()
	case !after.IsNull():
		d, err := time.ParseDuration(after.ValueString())
		c := parseTime(created)
		if err != nil || c.IsZero() {
			planned = types.StringUnknown()
			break
		}
		planned = expiresValue(current, c.Add(d))
	default:
		planned = types.StringNull()
	}
	if !planned.Equal(current) {
		warnIfExpired(planned, &resp.Diagnostics)
	}
	resp.Diagnostics.Append(resp.Plan.SetAttribute(ctx, path.Root("expires_at"), planned)...)
}
