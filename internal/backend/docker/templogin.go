package docker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/backend/selfhosted"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// Temporary logins inside a container: the SQL runs through the engine's
// exec API as psql in the container (see package selfhosted).

// OpenTempLogin implements backend.Backend.
func (b *Backend) OpenTempLogin(ctx context.Context, inst backend.Instance, ttl time.Duration) (backend.TempLogin, error) {
	if err := b.engine(ctx); err != nil {
		return backend.TempLogin{}, err
	}
	if inst.Proof.Legacy() {
		return backend.TempLogin{}, fmt.Errorf("opening a temporary login in container %q: %w", inst.Name, backend.ErrLegacy)
	}
	if ttl <= 0 {
		return backend.TempLogin{}, errors.New("opening a temporary login: the ttl must be positive")
	}
	c, err := b.runningProven(ctx, inst)
	if err != nil {
		return backend.TempLogin{}, fmt.Errorf("opening a temporary login in container %q: %w", inst.Name, err)
	}
	port, err := hostPort(c)
	if err != nil {
		return backend.TempLogin{}, fmt.Errorf("opening a temporary login in container %q: %w", inst.Name, err)
	}
	l, err := selfhosted.OpenTempLogin(ctx, b.psqlIn(c.ID, inst), inst, ttl)
	if err != nil {
		return backend.TempLogin{}, fmt.Errorf("%w in container %q", err, inst.Name)
	}
	host := inst.Host
	if host == "" {
		host = b.cfg.AdvertisedHost
	}
	l.Host, l.Port = host, port
	return l, nil
}

// RenewTempLogin implements backend.Backend.
func (b *Backend) RenewTempLogin(ctx context.Context, inst backend.Instance, role string, ttl time.Duration) (time.Time, error) {
	if err := b.engine(ctx); err != nil {
		return time.Time{}, err
	}
	if inst.Proof.Legacy() || !pgsql.IsTempRoleOf(inst.Username, role) {
		return time.Time{}, &backend.TempLoginGoneError{Role: role}
	}
	c, err := b.runningProven(ctx, inst)
	if err != nil {
		return time.Time{}, fmt.Errorf("renewing temporary login %q in container %q: %w", role, inst.Name, err)
	}
	until, err := selfhosted.RenewTempLogin(ctx, b.psqlIn(c.ID, inst), inst, role, ttl)
	var gone *backend.TempLoginGoneError
	if err != nil && !errors.As(err, &gone) {
		return time.Time{}, fmt.Errorf("renewing temporary login %q in container %q: %w", role, inst.Name, err)
	}
	return until, err
}

// CloseTempLogin implements backend.Backend. A container that is gone, or
// is someone else's now, took the login along.
func (b *Backend) CloseTempLogin(ctx context.Context, inst backend.Instance, role string) error {
	if err := b.engine(ctx); err != nil {
		return err
	}
	if inst.Proof.Legacy() || !pgsql.IsTempRoleOf(inst.Username, role) {
		return nil // never one of ours
	}
	c, err := b.runningProven(ctx, inst)
	if errors.Is(err, backend.ErrNotOurs) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("closing temporary login %q in container %q: %w", role, inst.Name, err)
	}
	if err := selfhosted.CloseTempLogin(ctx, b.psqlIn(c.ID, inst), inst, role); err != nil {
		return fmt.Errorf("closing temporary login %q in container %q: %w", role, inst.Name, err)
	}
	return nil
}

// runningProven finds the instance's container, proven to be its own, and
// running.
func (b *Backend) runningProven(ctx context.Context, inst backend.Instance) (container.InspectResponse, error) {
	c, ok, ours, err := b.find(ctx, inst)
	switch {
	case err != nil:
		return c, err
	case !ok:
		return c, fmt.Errorf("container does not exist: %w", backend.ErrNotOurs)
	case !ours:
		return c, fmt.Errorf("%w: %w", notOurs(inst), backend.ErrNotOurs)
	case c.State == nil || !c.State.Running || c.State.Restarting:
		status := "unknown"
		if c.State != nil {
			status = c.State.Status
		}
		return c, fmt.Errorf("container status is %s: %w", status, backend.ErrNotRunning)
	}
	return c, nil
}

// psqlIn is psql in the container (selfhosted.Psql).
func (b *Backend) psqlIn(id string, inst backend.Instance) selfhosted.Psql {
	return func(ctx context.Context, script string, secrets ...string) (string, error) {
		return b.psql(ctx, id, inst, script, secrets...)
	}
}

// psql runs script through psql in the container, as the instance's user
// over the unix socket, and returns its standard output.
func (b *Backend) psql(ctx context.Context, id string, inst backend.Instance, script string, secrets ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, selfhosted.PsqlTimeout)
	defer cancel()
	out, code, err := b.execStdin(ctx, id, container.ExecOptions{
		Cmd: selfhosted.PsqlCommand(inst.Username),
		Env: selfhosted.PsqlEnv(inst.DBName),
	}, selfhosted.PsqlInput(script))
	if err != nil {
		return "", err
	}
	if code != 0 {
		return "", selfhosted.PsqlFailed(code, out.stderr, secrets...)
	}
	return out.stdout, nil
}

// execOutput is what an exec wrote.
type execOutput struct{ stdout, stderr string }

// execStdin runs opts.Cmd in the container with stdin as its standard
// input (which, unlike the command line and environment, shows neither in
// `docker inspect` nor in `ps`), and returns its output and exit code. The
// program must exit by itself once it has read its input.
func (b *Backend) execStdin(ctx context.Context, id string, opts container.ExecOptions, stdin string) (execOutput, int, error) {
	name := opts.Cmd[0]
	opts.AttachStdin, opts.AttachStdout, opts.AttachStderr = true, true, true
	if b.execed != nil {
		b.execed(opts)
	}
	exec, err := b.cli.ContainerExecCreate(ctx, id, opts)
	if err != nil {
		return execOutput{}, 0, fmt.Errorf("starting %s: %w", name, err)
	}
	resp, err := b.cli.ContainerExecAttach(ctx, exec.ID, container.ExecAttachOptions{})
	if err != nil {
		return execOutput{}, 0, fmt.Errorf("attaching to %s: %w", name, err)
	}
	defer resp.Close()
	stop := context.AfterFunc(ctx, resp.Close) // unblocks the reads below
	defer stop()

	werr := make(chan error, 1)
	go func() {
		_, err := io.WriteString(resp.Conn, stdin)
		_ = resp.CloseWrite()
		werr <- err
	}()
	var stdout, stderr bytes.Buffer
	_, rerr := stdcopy.StdCopy(&stdout, &stderr, resp.Reader)
	if err := ctx.Err(); err != nil {
		return execOutput{}, 0, fmt.Errorf("running %s: %w", name, err)
	}
	if rerr != nil {
		return execOutput{}, 0, fmt.Errorf("reading %s's output: %w", name, rerr)
	}
	if err := <-werr; err != nil {
		return execOutput{}, 0, fmt.Errorf("sending input to %s: %w", name, err)
	}
	code, err := b.execExitCode(ctx, exec.ID, name)
	if err != nil {
		return execOutput{}, 0, err
	}
	return execOutput{stdout.String(), stderr.String()}, code, nil
}

// execExitCode waits for an exec whose output has ended to be reported
// finished, and returns its exit code.
func (b *Backend) execExitCode(ctx context.Context, id, name string) (int, error) {
	for {
		in, err := b.cli.ContainerExecInspect(ctx, id)
		if err != nil {
			return 0, fmt.Errorf("inspecting %s: %w", name, err)
		}
		if !in.Running {
			return in.ExitCode, nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("waiting for %s to exit: %w", name, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}
