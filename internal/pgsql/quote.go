// Package pgsql holds the small pieces of PostgreSQL plumbing shared by the
// meta DB store and the backends: quoting, SCRAM verifiers, connection
// settings built without string-concatenated URIs, and error classification.
package pgsql

import "strings"

// QuoteIdent quotes an identifier for SQL text. Callers validate first that
// it has no NUL byte (PostgreSQL cannot store one); a NUL would be cut here
// rather than let through.
func QuoteIdent(s string) string {
	s = strings.ReplaceAll(s, "\x00", "")
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// QuoteLiteral quotes a string constant the way PostgreSQL's quote_literal
// does: an E-prefixed string with doubled backslashes when there is a backslash, so
// the result means the same whatever standard_conforming_strings is.
func QuoteLiteral(s string) string {
	s = strings.ReplaceAll(s, "\x00", "")
	q := "'" + strings.ReplaceAll(s, "'", "''") + "'"
	if strings.Contains(s, `\`) {
		return "E" + strings.ReplaceAll(q, `\`, `\\`)
	}
	return q
}
