package docker

import (
	"context"
	"errors"
	"strings"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// The provider acts on an instance without its password (a write-only
// password is not in state) through psql inside the container, as the
// instance's user over the server's unix socket, which the postgres image
// trusts for local connections (see psql in templogin.go: the SQL goes in
// on stdin, never on the command line that `docker inspect` and `ps` show).

// storedVerifier reads the role's stored password secret inside the
// container ("" when it has none) and whether the role may log in now.
func (b *Backend) storedVerifier(ctx context.Context, id string, inst backend.Instance) (secret string, canLogin bool, err error) {
	out, err := b.psql(ctx, id, inst,
		`SELECT coalesce(rolpassword, '') || '|' || (rolcanlogin AND (rolvaliduntil IS NULL OR rolvaliduntil > now()))
		FROM pg_authid WHERE rolname = current_user;`+"\n\\q\n")
	if err != nil {
		return "", false, err
	}
	secret, login, ok := strings.Cut(strings.TrimSpace(out), "|")
	if !ok {
		return "", false, errors.New("unexpected psql output reading the role's password")
	}
	return secret, login == "true" || login == "t", nil
}

// setVerifier stores verifier as the instance user's password, from inside
// the container.
func (b *Backend) setVerifier(ctx context.Context, id string, inst backend.Instance, verifier string) error {
	_, err := b.psql(ctx, id, inst, "ALTER ROLE CURRENT_USER PASSWORD "+pgsql.QuoteLiteral(verifier)+";\n\\q\n", verifier)
	return err
}

// execCount runs a count(*) query inside the container.
func (b *Backend) execCount(ctx context.Context, id string, inst backend.Instance, query string) (string, error) {
	out, err := b.psql(ctx, id, inst, query+";\n\\q\n")
	return strings.TrimSpace(out), err
}
