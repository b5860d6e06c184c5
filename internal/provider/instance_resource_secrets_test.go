//go:build unix

package provider

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// TestAccSecrets_neverEchoed feeds a corpus of passwords, bad and good,
// through plan, apply, a refused rotation, a refused destroy and a destroy,
// with Terraform and the provider logging at TRACE, and scans everything
// they printed and logged, and the cluster's server log, for the passwords
// and for any SCRAM verifier.
func TestAccSecrets_neverEchoed(t *testing.T) {
	faultAccPreCheck(t, "POSTGRAAS_TEST_PG_LOG")
	pgLog := os.Getenv("POSTGRAAS_TEST_PG_LOG")
	logStart := fileSize(t, pgLog)
	rnd := faultRandomHex(6)
	good := `c0rpus-'"\@:/ é-` + rnd
	wrong := "c0rpus-wrong-" + rnd
	oob := "c0rpus-oob-" + rnd
	bad := map[string]string{
		// HCL literal -> the password it denotes
		`"c0rpus-nul\u0000-` + rnd + `"`:  "c0rpus-nul\x00-" + rnd,
		`"c0rpus-ﬁ-ligature-` + rnd + `"`: "c0rpus-ﬁ-ligature-" + rnd,
		`"c0rpus-nbsp\u00a0-` + rnd + `"`: "c0rpus-nbsp\u00a0-" + rnd,
	}
	name := "sec_" + rnd
	// The password comes in as a sensitive variable, as it would in real
	// use: a literal in the configuration would be quoted back by
	// Terraform itself in the source snippet of any diagnostic about it.
	config := `variable "pw" {
  type      = string
  sensitive = true
}
terraform {
  required_providers {
    postgraas = { source = "postgraas/postgraas" }
  }
}
provider "postgraas" {
  backend = "pg_cluster"
}
resource "postgraas_instance" "s" {
  name        = "` + name + `"
  db_name     = "` + name + `_db"
  db_username = "` + name + `_u"
  db_password = var.pw
}
`
	t.Cleanup(func() {
		_ = adminExec("DROP DATABASE IF EXISTS "+pgsql.QuoteIdent(name+"_db")+" WITH (FORCE)",
			"DROP ROLE IF EXISTS "+pgsql.QuoteIdent(name+"_u"))
		_ = withConnExec(metaDB(), "DELETE FROM db_instance WHERE postgraas_instance_name = '"+name+"'")
	})

	w := newFaultWorkspace(t, faultProviderDir(t), config, "TRACE")
	trace := []string{"TF_LOG=TRACE"}
	write := func(passwordHCL string) {
		if err := os.WriteFile(filepath.Join(w.dir, "secret.auto.tfvars"), []byte("pw = "+passwordHCL+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	expect := func(run string, ok bool, args ...string) {
		t.Helper()
		p, err := w.run(run, faultRunLimit, trace, args...)
		if (err == nil) != ok {
			t.Fatalf("terraform %s: err=%v, want success=%v\n%s", run, err, ok, faultTail(p.out.String(), 30))
		}
	}

	i := 0
	for hcl := range bad {
		write(hcl)
		expect("plan-bad-"+string(rune('a'+i)), false, "plan", "-input=false", "-no-color")
		i++
	}
	write(hclString(good))
	expect("apply", true, faultApply...)
	mustDo(t, adminExec("ALTER ROLE "+pgsql.QuoteIdent(name+"_u")+" PASSWORD "+pgsql.QuoteLiteral(oob)))
	expect("destroy-refused", false, faultDestroy...)
	write(hclString(wrong))
	expect("rotate-refused", false, faultApply...)
	write(hclString(oob))
	expect("apply-accepted", true, faultApply...)
	expect("destroy", true, faultDestroy...)

	secrets := []string{good, wrong, oob}
	for _, pw := range bad {
		secrets = append(secrets, pw)
	}
	entries, err := os.ReadDir(w.dir)
	if err != nil {
		t.Fatal(err)
	}
	scanned := 0
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".log") && !strings.HasSuffix(e.Name(), ".out") {
			continue // the state holds db_password by design; logs and output must not
		}
		b, err := os.ReadFile(filepath.Join(w.dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		scanned += len(b)
		scanForSecrets(t, e.Name(), string(b), secrets, true)
	}
	if scanned < 100_000 {
		t.Fatalf("only %d bytes of output and TRACE logs: the logs were not written where expected", scanned)
	}
	scanForSecrets(t, "the cluster's server log", readFrom(t, pgLog, logStart), secrets, false)
	t.Logf("scanned %d bytes of terraform output and TRACE logs, and the server log, for %d passwords", scanned, len(secrets))
}

func scanForSecrets(t *testing.T, where, text string, secrets []string, verifiers bool) {
	t.Helper()
	for _, s := range secrets {
		if strings.Contains(text, s) {
			t.Errorf("%s contains a password of the corpus (%q...)", where, s[:8])
		}
	}
	if verifiers && strings.Contains(text, "SCRAM-SHA-256$") {
		t.Errorf("%s contains a SCRAM verifier", where)
	}
}

func fileSize(t *testing.T, path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

func readFrom(t *testing.T, path string, off int64) string {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(b)) < off {
		return string(b)
	}
	return string(b[off:])
}

func withConnExec(target pgsql.Target, sql string) error {
	return withConn(target, func(ctx context.Context, c *pgx.Conn) error {
		_, err := c.Exec(ctx, sql)
		return err
	})
}
