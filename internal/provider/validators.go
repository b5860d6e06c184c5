package provider

import (
	"context"
	"fmt"
	"net"
	"regexp"
	"strings"
	"time"

	"github.com/hashicorp/terraform-plugin-framework-validators/stringvalidator"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"

	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// maxIdentifierBytes is PostgreSQL's NAMEDATALEN-1: longer names are cut
// silently by the server (postgraas_server bug 3), so they are refused here.
const maxIdentifierBytes = 63

var (
	instanceNameRegexp = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)
	// No NUL (PostgreSQL cannot store it) and no control characters, which
	// only cause trouble in logs, psql and shell scripts.
	noControlRegexp = regexp.MustCompile(`^[^\x00-\x1f\x7f]*$`)
)

func instanceNameValidators() []validator.String {
	return []validator.String{
		stringvalidator.LengthBetween(1, maxIdentifierBytes),
		stringvalidator.RegexMatches(instanceNameRegexp,
			"must start with a letter or digit and contain only letters, digits, '_', '.' and '-'"),
	}
}

func identifierValidators() []validator.String {
	return []validator.String{
		stringvalidator.LengthBetween(1, maxIdentifierBytes),
		stringvalidator.RegexMatches(noControlRegexp, "must not contain NUL or other control characters"),
	}
}

func usernameValidators() []validator.String {
	return append(identifierValidators(),
		stringvalidator.NoneOfCaseInsensitive("postgres", "public", "none", "current_user", "session_user", "current_role"),
		reservedPrefixes{"postgres@", "pg_"},
	)
}

func passwordValidators() []validator.String {
	return []validator.String{
		stringvalidator.LengthAtLeast(1),
		noNUL{},
		saslprepStable{},
	}
}

// noNUL refuses a NUL byte without quoting the value: the framework's
// RegexMatches would print the password in its diagnostic.
type noNUL struct{}

func (noNUL) Description(context.Context) string { return "must not contain a NUL character" }

func (v noNUL) MarkdownDescription(ctx context.Context) string { return v.Description(ctx) }

func (v noNUL) ValidateString(ctx context.Context, req validator.StringRequest, resp *validator.StringResponse) {
	if req.ConfigValue.IsNull() || req.ConfigValue.IsUnknown() || !strings.ContainsRune(req.ConfigValue.ValueString(), 0) {
		return
	}
	resp.Diagnostics.AddAttributeError(req.Path, "Invalid password",
		fmt.Sprintf("Attribute %s %s: PostgreSQL cannot store one.", req.Path, v.Description(ctx)))
}

// saslprepStable refuses passwords that SCRAM clients would change before
// hashing, so that every client can log in with them (see
// pgsql.PasswordIsNormalized).
type saslprepStable struct{}

func (saslprepStable) Description(context.Context) string {
	return "must be in Unicode normal form (unchanged by NFKC and SASLprep)"
}

func (v saslprepStable) MarkdownDescription(ctx context.Context) string { return v.Description(ctx) }

func (v saslprepStable) ValidateString(ctx context.Context, req validator.StringRequest, resp *validator.StringResponse) {
	if req.ConfigValue.IsNull() || req.ConfigValue.IsUnknown() {
		return
	}
	if pgsql.PasswordIsNormalized(req.ConfigValue.ValueString()) {
		return
	}
	// The detail must not quote the password.
	resp.Diagnostics.AddAttributeError(req.Path, "Password not in normal form",
		fmt.Sprintf("Attribute %s %s: it contains characters (such as ligatures, compatibility forms, non-ASCII "+
			"spaces or invisible ones) that PostgreSQL clients rewrite before hashing, so some clients could not log in. "+
			"Use a password without them.", req.Path, v.Description(ctx)))
}

// reservedPrefixes refuses values starting with any of the prefixes, in any
// case: "pg_" names are reserved for PostgreSQL's own roles, and
// "postgres@host" would log in as the cluster's superuser on Azure-style
// servers. The framework's validators have no case-insensitive prefix check.
type reservedPrefixes []string

func (r reservedPrefixes) Description(context.Context) string {
	return fmt.Sprintf("must not start with %s (in any case)", strings.Join(r, " or "))
}

func (r reservedPrefixes) MarkdownDescription(ctx context.Context) string { return r.Description(ctx) }

func (r reservedPrefixes) ValidateString(ctx context.Context, req validator.StringRequest, resp *validator.StringResponse) {
	if req.ConfigValue.IsNull() || req.ConfigValue.IsUnknown() {
		return
	}
	v := strings.ToLower(req.ConfigValue.ValueString())
	for _, p := range r {
		if strings.HasPrefix(v, p) {
			resp.Diagnostics.AddAttributeError(req.Path, "Reserved user name",
				fmt.Sprintf("Attribute %s %s, got %q: that name is reserved by PostgreSQL or would log in as the "+
					"cluster's superuser. Choose another user name.", req.Path, r.Description(ctx), req.ConfigValue.ValueString()))
			return
		}
	}
}

// durationBetween accepts a Go duration ("90s", "15m", "1h30m") from min to
// max. The framework's validators have no duration type.
type durationBetween struct{ min, max time.Duration }

func (d durationBetween) Description(context.Context) string {
	return fmt.Sprintf("must be a duration such as \"15m\" or \"1h30m\" (units h, m, s), from %s to %s", formatDuration(d.min), formatDuration(d.max))
}

func (d durationBetween) MarkdownDescription(ctx context.Context) string { return d.Description(ctx) }

func (d durationBetween) ValidateString(ctx context.Context, req validator.StringRequest, resp *validator.StringResponse) {
	if req.ConfigValue.IsNull() || req.ConfigValue.IsUnknown() {
		return
	}
	v, err := time.ParseDuration(req.ConfigValue.ValueString())
	if err == nil && v >= d.min && v <= d.max {
		return
	}
	resp.Diagnostics.AddAttributeError(req.Path, "Invalid duration",
		fmt.Sprintf("Attribute %s %s, got %q.", req.Path, d.Description(ctx), req.ConfigValue.ValueString()))
}

// formatDuration writes a duration as one would: "15m", not "15m0s".
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// hostnameRegexp is a DNS name (RFC 1123 labels; '_' is allowed, as some
// internal DNS names have it).
var hostnameRegexp = regexp.MustCompile(`^[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$`)

// bareHost drops the brackets around an IPv6 literal ("[::1]" is "::1"):
// URLs need them, PostgreSQL clients and Docker's port bindings do not take
// them.
func bareHost(h string) string {
	if strings.Contains(h, ",") {
		parts := strings.Split(h, ",")
		for i, p := range parts {
			parts[i] = bareHost(p)
		}
		return strings.Join(parts, ",")
	}
	if inner, ok := strings.CutPrefix(h, "["); ok {
		if inner, ok = strings.CutSuffix(inner, "]"); ok && net.ParseIP(stripZone(inner)) != nil {
			return inner
		}
	}
	return h
}

func stripZone(h string) string {
	if i := strings.LastIndexByte(h, '%'); i >= 0 {
		return h[:i]
	}
	return h
}

// checkHost accepts a host name, an IPv4 address, an IPv6 address with or
// without brackets, or (for PostgreSQL) a unix socket directory; for
// PostgreSQL also a comma-separated list of them, which libpq and pgx try
// in turn.
func checkHost(h string, socketDir bool) error {
	if socketDir && strings.Contains(h, ",") {
		for _, one := range strings.Split(h, ",") {
			if err := checkHost(one, true); err != nil {
				return err
			}
		}
		return nil
	}
	b := bareHost(h)
	switch {
	case net.ParseIP(stripZone(b)) != nil:
		return nil
	case socketDir && strings.HasPrefix(b, "/"):
		return nil
	case strings.ContainsAny(b, "[]"):
		return fmt.Errorf("%q is not a host: brackets only go around a whole IPv6 address, as in [::1]", h)
	case strings.Contains(b, ":"):
		return fmt.Errorf("%q is not a host: set the port in its own attribute, and write IPv6 addresses as ::1 or [::1]", h)
	case !hostnameRegexp.MatchString(b):
		return fmt.Errorf("%q is not a host name or IP address", h)
	}
	return nil
}

// hostValidator checks a host attribute at plan time (see checkHost).
type hostValidator struct{ socketDir bool }

func (hostValidator) Description(context.Context) string {
	return "must be a host name or an IP address (IPv6 with or without brackets)"
}

func (v hostValidator) MarkdownDescription(ctx context.Context) string { return v.Description(ctx) }

func (v hostValidator) ValidateString(_ context.Context, req validator.StringRequest, resp *validator.StringResponse) {
	if req.ConfigValue.IsNull() || req.ConfigValue.IsUnknown() {
		return
	}
	if err := checkHost(req.ConfigValue.ValueString(), v.socketDir); err != nil {
		resp.Diagnostics.AddAttributeError(req.Path, "Invalid host", err.Error()+".")
	}
}
