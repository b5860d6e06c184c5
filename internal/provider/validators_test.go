package provider

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
)

func validate(vs []validator.String, v string) bool {
	resp := &validator.StringResponse{}
	for _, val := range vs {
		val.ValidateString(context.Background(), validator.StringRequest{
			Path: path.Root("x"), ConfigValue: types.StringValue(v),
		}, resp)
	}
	return !resp.Diagnostics.HasError()
}

func TestValidators(t *testing.T) {
	cases := []struct {
		what  string
		vs    []validator.String
		value string
		ok    bool
	}{
		{"name", instanceNameValidators(), "my_postgraas", true},
		{"name", instanceNameValidators(), "ci-1234.x", true},
		{"name", instanceNameValidators(), "9lives", true},
		{"name", instanceNameValidators(), strings.Repeat("a", 63), true},
		{"name", instanceNameValidators(), strings.Repeat("a", 64), false},
		{"name", instanceNameValidators(), "", false},
		{"name", instanceNameValidators(), "-x", false},
		{"name", instanceNameValidators(), "_x", false},
		{"name", instanceNameValidators(), "a b", false},
		{"name", instanceNameValidators(), "a/b", false},
		{"name", instanceNameValidators(), "é", false},
		{"db_name", identifierValidators(), "My DB \"quoted\"", true},
		{"db_name", identifierValidators(), strings.Repeat("é", 31) + "x", true}, // 63 bytes
		{"db_name", identifierValidators(), strings.Repeat("é", 32), false},      // 64 bytes, 32 characters
		{"db_name", identifierValidators(), "", false},
		{"db_name", identifierValidators(), "a\x00b", false},
		{"db_name", identifierValidators(), "a\nb", false},
		{"db_name", identifierValidators(), "a\x7fb", false},
		{"db_username", usernameValidators(), "app", true},
		{"db_username", usernameValidators(), "app@server", true},
		{"db_username", usernameValidators(), "postgresql", true},
		{"db_username", usernameValidators(), "postgres", false},
		{"db_username", usernameValidators(), "POSTGRES", false},
		{"db_username", usernameValidators(), "postgres@example.com", false},
		{"db_username", usernameValidators(), "Postgres@localhost", false},
		{"db_username", usernameValidators(), "pg_monitor", false},
		{"db_username", usernameValidators(), "PG_x", false},
		{"db_username", usernameValidators(), "public", false},
		{"db_username", usernameValidators(), "NONE", false},
		{"db_username", usernameValidators(), "current_user", false},
		{"db_username", usernameValidators(), "session_user", false},
		{"db_username", usernameValidators(), "current_role", false},
		{"db_username", usernameValidators(), strings.Repeat("u", 64), false},
		{"db_password", passwordValidators(), "x", true},
		{"db_password", passwordValidators(), "", false},
		{"db_password", passwordValidators(), "a\x00", false},
		{"db_password", passwordValidators(), "grüße, été", true},
		{"db_password", passwordValidators(), "\u2168", false},           // Roman numeral nine: NFKC makes it "IX"
		{"db_password", passwordValidators(), "e\u0301", false},          // decomposed é
		{"db_password", passwordValidators(), "soft\u00adhyphen", false}, // SASLprep deletes it
		{"db_password", passwordValidators(), "no\u00a0break", false},    // non-ASCII space
	}
	for _, c := range cases {
		if got := validate(c.vs, c.value); got != c.ok {
			t.Errorf("%s %q: valid=%v, want %v", c.what, c.value, got, c.ok)
		}
	}
}

func TestConnectionURIEscapesEveryPart(t *testing.T) {
	got := connectionURI("app@srv", "p@ss:w/rd?#", "db.example.com", 5433, "my db/x", "require")
	want := "postgres://app%40srv:p%40ss%3Aw%2Frd%3F%23@db.example.com:5433/my%20db%2Fx?sslmode=require"
	if got != want {
		t.Fatalf("got %s\nwant %s", got, want)
	}
	if got := connectionURI("u", "p", "::1", 5432, "d", ""); got != "postgres://u:p@[::1]:5432/d" {
		t.Fatalf("IPv6: got %s", got)
	}
}

// Every validation rule, through Terraform, at plan time, with the
// attribute's path in the diagnostic.
func TestAccInstance_validation(t *testing.T) {
	base := clusterInstance{label: "v", name: "valid", db: "valid_db", user: "valid_user", password: "pw"}
	type bad struct {
		mutate func(*clusterInstance)
		want   string
	}
	cases := []bad{
		{func(i *clusterInstance) { i.name = "" }, `name`},
		{func(i *clusterInstance) { i.name = "-lead" }, `name`},
		{func(i *clusterInstance) { i.name = "has space" }, `name`},
		{func(i *clusterInstance) { i.name = strings.Repeat("n", 64) }, `name`},
		{func(i *clusterInstance) { i.db = strings.Repeat("é", 32) }, `db_name`},
		{func(i *clusterInstance) { i.db = "" }, `db_name`},
		{func(i *clusterInstance) { i.db = "a\tb" }, `db_name`},
		{func(i *clusterInstance) { i.user = strings.Repeat("u", 64) }, `db_username`},
		{func(i *clusterInstance) { i.user = "bad\nname" }, `db_username`},
		{func(i *clusterInstance) { i.user = "postgres" }, `db_username`},
		{func(i *clusterInstance) { i.user = "Postgres" }, `db_username`},
		{func(i *clusterInstance) { i.user = "postgres@example.com" }, `db_username`},
		{func(i *clusterInstance) { i.user = "postgres@localhost" }, `db_username`},
		{func(i *clusterInstance) { i.user = "pg_signal" }, `db_username`},
		{func(i *clusterInstance) { i.user = "public" }, `db_username`},
		{func(i *clusterInstance) { i.user = "none" }, `db_username`},
		{func(i *clusterInstance) { i.user = "current_user" }, `db_username`},
		{func(i *clusterInstance) { i.user = "session_user" }, `db_username`},
		{func(i *clusterInstance) { i.user = "current_role" }, `db_username`},
		{func(i *clusterInstance) { i.user = "app@elsewhere" }, `db_username`}, // '@' needs pg_cluster.server
		{func(i *clusterInstance) { i.password = "" }, `db_password`},
		{func(i *clusterInstance) { i.extra = `image = "postgres:17"` }, `image`},
	}
	var steps []resource.TestStep
	for _, c := range cases {
		i := base
		c.mutate(&i)
		steps = append(steps, resource.TestStep{
			Config:      clusterConfig("", i),
			PlanOnly:    true,
			ExpectError: regexp.MustCompile(`(?s)with postgraas_instance\.v,.*` + c.want),
		})
	}
	// With a server, "user@server" is the same role as "user"; another
	// server's suffix is refused.
	withServer := base
	withServer.user = "app@other"
	steps = append(steps, resource.TestStep{
		Config:      clusterConfig(`pg_cluster = { server = "srv1" }`, withServer),
		PlanOnly:    true,
		ExpectError: regexp.MustCompile(`(?s)Invalid instance settings.*only the suffix @srv1`),
	})
	// "app@srv1" passes validation; the plan then checks the admin's
	// login, postgres@srv1, which the (not Azure-style) test server does
	// not know: that the plan got as far as that check is the proof.
	ok := base
	ok.user = "app@srv1"
	steps = append(steps, resource.TestStep{
		Config:      clusterConfig(`pg_cluster = { server = "srv1" }`, ok),
		PlanOnly:    true,
		ExpectError: regexp.MustCompile(`(?s)pg_cluster admin: wrong password.*pg_cluster.password`),
	})
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { testAccPreCheck(t) },
		ProtoV6ProviderFactories: testAccProviders,
		Steps:                    steps,
	})
}

func TestFormatDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		15 * time.Minute: "15m", 24 * time.Hour: "24h", 90 * time.Minute: "1h30m", time.Second: "1s",
		10 * time.Second: "10s", 100 * time.Minute: "1h40m", time.Hour + 10*time.Second: "1h0m10s",
	} {
		if got := formatDuration(d); got != want {
			t.Errorf("formatDuration(%s) = %q, want %q", d, got, want)
		}
	}
}

func TestHosts(t *testing.T) {
	for _, c := range []struct {
		in, bare  string
		socketDir bool
		ok        bool
	}{
		{"127.0.0.1", "127.0.0.1", false, true},
		{"db.example.com", "db.example.com", false, true},
		{"db_1.internal.", "db_1.internal.", false, true},
		{"::1", "::1", false, true},
		{"[::1]", "::1", false, true},
		{"[fe80::1%eth0]", "fe80::1%eth0", false, true},
		{"2001:db8::5", "2001:db8::5", false, true},
		{"/var/run/postgresql", "/var/run/postgresql", true, true},
		{"/var/run/postgresql", "/var/run/postgresql", false, false},
		{"[::1", "[::1", false, false},
		{"[db.example.com]", "[db.example.com]", false, false},
		{"db.example.com:5432", "db.example.com:5432", false, false},
		{"127.0.0.1:5432", "127.0.0.1:5432", false, false},
		{"a b", "a b", false, false},
		{"-lead.example.com", "-lead.example.com", false, false},
		{"db1.example.com,[::1]", "db1.example.com,::1", true, true}, // libpq's host list
		{"db1.example.com,[::1]", "db1.example.com,::1", false, false},
		{"db1,bad host", "db1,bad host", true, false},
	} {
		if got := bareHost(c.in); got != c.bare {
			t.Errorf("bareHost(%q) = %q, want %q", c.in, got, c.bare)
		}
		if err := checkHost(c.in, c.socketDir); (err == nil) != c.ok {
			t.Errorf("checkHost(%q, socketDir %v) = %v, want ok=%v", c.in, c.socketDir, err, c.ok)
		}
		if got := validate([]validator.String{hostValidator{socketDir: c.socketDir}}, c.in); got != c.ok {
			t.Errorf("hostValidator(%q) valid=%v, want %v", c.in, got, c.ok)
		}
	}
}
