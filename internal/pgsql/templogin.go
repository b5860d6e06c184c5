package pgsql

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"
)

// Temporary logins: a role named <owner>_tmp_<16 hex digits> that may log
// in until a VALID UNTIL time and acts as its owner role. Both backends
// make them, on a cluster and inside a container.

const (
	// tempRoleInfix separates the owner's name from the random part.
	tempRoleInfix = "_tmp_"
	// tempRoleRandomBytes of randomness, 16 hex digits: never cut.
	tempRoleRandomBytes = 8
	// maxRoleLen is NAMEDATALEN-1: longer names are truncated by the
	// server, which would cut the random part.
	maxRoleLen = 63
)

// TempRoleOptions are the attributes of a temporary login role: it may log
// in and inherits its owner's privileges, and nothing more.
const TempRoleOptions = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT"

var tempRoleTail = regexp.MustCompile(`^` + tempRoleInfix + `[0-9a-f]{16}$`)

// TempRolePrefix is the part of a temporary login's name taken from its
// owner role: the owner's name, cut (at a character boundary) so that the
// whole name fits in 63 bytes with the random part intact.
func TempRolePrefix(owner string) string {
	limit := maxRoleLen - len(tempRoleInfix) - 2*tempRoleRandomBytes
	if len(owner) <= limit {
		return owner
	}
	cut := limit
	for cut > 0 && !utf8.RuneStart(owner[cut]) {
		cut--
	}
	return owner[:cut]
}

// NewTempRoleName is a fresh temporary login name for owner.
func NewTempRoleName(owner string) string {
	b := make([]byte, tempRoleRandomBytes)
	mustRead(b)
	return TempRolePrefix(owner) + tempRoleInfix + hex.EncodeToString(b)
}

// IsTempRoleOf reports whether name is spelled like a temporary login of
// owner. A name is not a proof: the role's comment is.
func IsTempRoleOf(owner, name string) bool {
	prefix := TempRolePrefix(owner)
	return strings.HasPrefix(name, prefix) && tempRoleTail.MatchString(name[len(prefix):])
}

// RoleCommentSQL is a scalar subquery for the comment on the role whose
// oid is the expression oid. It reads pg_shdescription directly rather than
// calling shobj_description(): that SQL function costs about 4 ms on its
// first call in every session (each provider process opens new ones) and
// is not inlined, which make bench showed as a slower refresh.
func RoleCommentSQL(oid string) string {
	return "SELECT description FROM pg_catalog.pg_shdescription WHERE objoid = " + oid +
		" AND classoid = 'pg_catalog.pg_authid'::regclass"
}

// TempRolesWhere is the SQL condition that a pg_roles row, under alias,
// is a temporary login of the owner whose name prefix (TempRolePrefix) is
// the SQL expression prefix and that carries the comment marker (an SQL
// expression too): the server-side twin of IsTempRoleOf plus the proof.
// It uses only functions PostgreSQL 9.4 has, since a docker instance may
// run an old image.
func TempRolesWhere(alias, marker, prefix string) string {
	return fmt.Sprintf(`(`+RoleCommentSQL("%[1]s.oid")+`) = %[2]s
  AND left(%[1]s.rolname, length(%[3]s)) = %[3]s
  AND substr(%[1]s.rolname, length(%[3]s) + 1) ~ '^%[4]s[0-9a-f]{16}$'`, alias, marker, prefix, tempRoleInfix)
}

// NewTempPassword is a random password for a temporary login: 32
// characters of URL-safe base64, 192 bits.
func NewTempPassword() string {
	b := make([]byte, 24)
	mustRead(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func mustRead(b []byte) {
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("reading random bytes: %v", err)) // crypto/rand does not fail on Linux
	}
}
