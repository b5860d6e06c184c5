package pgsql

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
)

func TestQuoteIdent(t *testing.T) {
	for in, want := range map[string]string{
		"abc":        `"abc"`,
		"Mixed Case": `"Mixed Case"`,
		`a"b`:        `"a""b"`,
		`"`:          `""""`,
		"":           `""`,
		`a'b\c`:      `"a'b\c"`,
		"a\x00b":     `"ab"`,
		"tënant-1":   `"tënant-1"`,
	} {
		if got := QuoteIdent(in); got != want {
			t.Errorf("QuoteIdent(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestQuoteLiteral(t *testing.T) {
	for in, want := range map[string]string{
		"abc":                                   `'abc'`,
		"":                                      `''`,
		"it's":                                  `'it''s'`,
		`a\b`:                                   `E'a\\b'`,
		`'\`:                                    `E'''\\'`,
		`\'`:                                    `E'\\'''`,
		"a\x00b":                                `'ab'`,
		"pässwörd":                              `'pässwörd'`,
		"SCRAM-SHA-256$4096:c2FsdA==$a2V5:a2V5": `'SCRAM-SHA-256$4096:c2FsdA==$a2V5:a2V5'`,
	} {
		if got := QuoteLiteral(in); got != want {
			t.Errorf("QuoteLiteral(%q) = %q, want %q", in, got, want)
		}
	}
}

// unquoteIdent reverses QuoteIdent, refusing anything a quoted identifier
// may not contain: an undoubled '"' would end it early.
func unquoteIdent(q string) (string, bool) {
	if len(q) < 2 || q[0] != '"' || q[len(q)-1] != '"' {
		return "", false
	}
	var b strings.Builder
	inner := q[1 : len(q)-1]
	for i := 0; i < len(inner); i++ {
		if inner[i] == '"' {
			if i+1 >= len(inner) || inner[i+1] != '"' {
				return "", false
			}
			i++
		}
		b.WriteByte(inner[i])
	}
	return b.String(), true
}

// unquoteLiteral reverses QuoteLiteral. It refuses a backslash outside an
// E” string: its meaning would depend on standard_conforming_strings.
func unquoteLiteral(q string) (string, bool) {
	escaped := strings.HasPrefix(q, "E")
	if escaped {
		q = q[1:]
	}
	if len(q) < 2 || q[0] != '\'' || q[len(q)-1] != '\'' {
		return "", false
	}
	var b strings.Builder
	inner := q[1 : len(q)-1]
	for i := 0; i < len(inner); i++ {
		switch inner[i] {
		case '\'':
			if i+1 >= len(inner) || inner[i+1] != '\'' {
				return "", false
			}
			i++
		case '\\':
			if !escaped || i+1 >= len(inner) || inner[i+1] != '\\' {
				return "", false
			}
			i++
		}
		b.WriteByte(inner[i])
	}
	return b.String(), true
}

var fuzzSeeds = []string{
	"", "abc", `"`, `""`, "'", "''", `\`, `\\`, `'\'`, `E'x'`, "a\x00b",
	"pässwörd", "日本語", "user@server", "a b;DROP ROLE x;--", "\xff\xfe",
	strings.Repeat("x", 64),
}

// fuzzConn returns a connection to the test server when one is configured;
// the fuzz tests then also check what the server makes of the quoting.
func fuzzConn(f *testing.F, setup string) *pgx.Conn {
	if os.Getenv("POSTGRAAS_PG_CLUSTER_HOST") == "" {
		return nil
	}
	conn := testConnect(f, testServer(f))
	if setup != "" {
		if _, err := conn.Exec(context.Background(), setup); err != nil {
			f.Fatal(err)
		}
	}
	return conn
}

func FuzzQuoteIdent(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	conn := fuzzConn(f, "")
	f.Fuzz(func(t *testing.T, s string) {
		q := QuoteIdent(s)
		got, ok := unquoteIdent(q)
		want := strings.ReplaceAll(s, "\x00", "")
		if !ok || got != want {
			t.Fatalf("QuoteIdent(%q) = %q, unquotes to %q (ok=%v)", s, q, got, ok)
		}
		// The server cannot hold NUL or invalid UTF-8, refuses "" and
		// truncates names beyond 63 bytes.
		if conn == nil || s == "" || len(s) > 63 || strings.ContainsRune(s, 0) || !utf8.ValidString(s) {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		rows, err := conn.Query(ctx, "SELECT 1 AS "+q, pgx.QueryExecModeSimpleProtocol)
		if err != nil {
			t.Fatalf("SELECT 1 AS %s: %v", q, err)
		}
		name := rows.FieldDescriptions()[0].Name
		rows.Close()
		if err := rows.Err(); err != nil {
			t.Fatalf("SELECT 1 AS %s: %v", q, err)
		}
		if name != s {
			t.Fatalf("SELECT 1 AS %s: column named %q, want %q", q, name, s)
		}
	})
}

func FuzzQuoteLiteral(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	// QuoteLiteral must mean the same under both settings of
	// standard_conforming_strings.
	conns := []*pgx.Conn{
		fuzzConn(f, ""),
		fuzzConn(f, "SET standard_conforming_strings = off; SET escape_string_warning = off"),
	}
	f.Fuzz(func(t *testing.T, s string) {
		q := QuoteLiteral(s)
		got, ok := unquoteLiteral(q)
		want := strings.ReplaceAll(s, "\x00", "")
		if !ok || got != want {
			t.Fatalf("QuoteLiteral(%q) = %q, unquotes to %q (ok=%v)", s, q, got, ok)
		}
		if strings.ContainsRune(s, 0) || !utf8.ValidString(s) {
			return
		}
		for _, conn := range conns {
			if conn == nil {
				return
			}
			// pgconn directly: pgx refuses the simple protocol when
			// standard_conforming_strings is off.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			res, err := conn.PgConn().Exec(ctx, "SELECT "+q+"::text").ReadAll()
			cancel()
			if err != nil {
				t.Fatalf("SELECT %s: %v", q, err)
			}
			if len(res) != 1 || len(res[0].Rows) != 1 {
				t.Fatalf("SELECT %s: unexpected result %v", q, res)
			}
			if out := string(res[0].Rows[0][0]); out != s {
				t.Fatalf("SELECT %s = %q, want %q", q, out, s)
			}
		}
	})
}
