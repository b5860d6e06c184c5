package docker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// execSQL runs sql with psql inside the container, as the instance's user
// over the server's unix socket, which the postgres image trusts for local
// connections. It is how the provider acts on an instance without its
// password (a write-only password is not in state). The SQL goes in on
// stdin, never on the command line, which `docker inspect` and `ps` show;
// it carries verifiers at most, never a password.
func (b *Backend) execSQL(ctx context.Context, id, user, db, sql string) (string, error) {
	ex, err := b.cli.ContainerExecCreate(ctx, id, container.ExecOptions{
		User:         "postgres",
		AttachStdin:  true,
		AttachStdout: true,
		AttachStderr: true,
		Cmd:          []string{"psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-U", user, "-d", db, "-f", "-"},
	})
	if err != nil {
		return "", fmt.Errorf("running psql in the container: %w", err)
	}
	att, err := b.cli.ContainerExecAttach(ctx, ex.ID, container.ExecAttachOptions{})
	if err != nil {
		return "", fmt.Errorf("running psql in the container: %w", err)
	}
	defer att.Close()
	if _, err := att.Conn.Write([]byte(sql + "\n")); err != nil {
		return "", fmt.Errorf("running psql in the container: %w", err)
	}
	if err := att.CloseWrite(); err != nil {
		return "", fmt.Errorf("running psql in the container: %w", err)
	}
	var stdout, stderr bytes.Buffer
	if _, err := stdcopy.StdCopy(&stdout, &stderr, att.Reader); err != nil {
		return "", fmt.Errorf("reading psql's output in the container: %w", err)
	}
	res, err := b.cli.ContainerExecInspect(ctx, ex.ID)
	if err != nil {
		return "", fmt.Errorf("running psql in the container: %w", err)
	}
	if res.ExitCode != 0 {
		// psql's errors name objects, not the SQL's literals.
		return "", fmt.Errorf("psql in the container exited %d: %s", res.ExitCode, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// storedVerifier reads the role's stored password secret inside the
// container ("" when it has none).
func (b *Backend) storedVerifier(ctx context.Context, id, user, db string) (secret string, canLogin bool, err error) {
	out, err := b.execSQL(ctx, id, user, db,
		`SELECT coalesce(rolpassword, '') || '|' || (rolcanlogin AND (rolvaliduntil IS NULL OR rolvaliduntil > now()))
		FROM pg_authid WHERE rolname = current_user;`)
	if err != nil {
		return "", false, err
	}
	secret, login, ok := strings.Cut(out, "|")
	if !ok {
		return "", false, errors.New("unexpected psql output reading the role's password")
	}
	return secret, login == "true" || login == "t", nil
}

// setVerifier stores verifier as the instance user's password, from inside
// the container.
func (b *Backend) setVerifier(ctx context.Context, id, user, db, verifier string) error {
	_, err := b.execSQL(ctx, id, user, db, "ALTER ROLE CURRENT_USER PASSWORD "+pgsql.QuoteLiteral(verifier)+";")
	return err
}
