package docker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/jackc/pgx/v5"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/backend/selfhosted"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// existingReadyTimeout bounds the wait for the server of an existing
// container (just started by us, or restarted by Docker) to take logins, so
// an unreachable port fails in minutes rather than at the caller's deadline.
const existingReadyTimeout = 2 * time.Minute

// find looks the instance's container up by ID, or by exact name for rows
// without one (a create that died before its row was completed). ok is
// false when there is none; ours is false when the container found does
// not carry the instance's proof, so it is someone else's. For a legacy
// record only the recorded container ID counts, and the password login
// that Delete makes is the proof.
func (b *Backend) find(ctx context.Context, inst backend.Instance) (c container.InspectResponse, ok, ours bool, err error) {
	ref := inst.ContainerID
	if ref == "" {
		ref = inst.Name
	}
	c, err = b.cli.ContainerInspect(ctx, ref)
	if cerrdefs.IsNotFound(err) {
		return c, false, false, nil
	}
	if err != nil {
		return c, false, false, fmt.Errorf("inspecting container %q: %w", inst.Name, err)
	}
	// By name, inspect also matches ID prefixes.
	if inst.ContainerID == "" && c.Name != "/"+inst.Name {
		return c, false, false, nil
	}
	return c, true, proven(c, inst), nil
}

// proven reports whether c carries inst's proof.
func proven(c container.InspectResponse, inst backend.Instance) bool {
	if inst.Proof.Legacy() {
		return inst.ContainerID != ""
	}
	if inst.PoolMember != 0 {
		return poolProven(c, inst)
	}
	if c.Config == nil {
		return false
	}
	l := c.Config.Labels
	return l[LabelInstance] == "true" &&
		l[LabelInstanceID] == strconv.FormatInt(inst.Proof.ID, 10) &&
		l[LabelProof] == inst.Proof.Value
}

// notOurs is the error for a container that has the instance's name but
// not its proof.
func notOurs(inst backend.Instance) error {
	return fmt.Errorf("container %q does not carry this instance's ownership proof; it was left alone", inst.Name)
}

// Inspect implements backend.Backend.
func (b *Backend) Inspect(ctx context.Context, inst backend.Instance) (backend.Status, error) {
	if err := b.engine(ctx); err != nil {
		return backend.Status{}, err
	}
	c, ok, ours, err := b.find(ctx, inst)
	if err != nil || !ok {
		return backend.Status{}, err
	}
	if !ours {
		return backend.Status{Foreign: []string{fmt.Sprintf("container %q", inst.Name)}}, nil
	}
	st := backend.Status{Exists: true}
	if c.State != nil {
		st.State = c.State.Status
	}
	// A stopped container publishes no port; keep the recorded one then.
	if port, err := hostPort(c); err == nil {
		st.Port = port
	}
	return st, nil
}

// SetPassword implements backend.Backend. With the password at hand it logs
// in as the tenant (the tenant's own login is the only one the image's
// contract promises); without one (write-only mode) it sets the verifier
// from inside the container.
func (b *Backend) SetPassword(ctx context.Context, inst backend.Instance, auth backend.Auth, verifier string) error {
	if err := b.engine(ctx); err != nil {
		return err
	}
	s, err := b.provenSession(ctx, inst, auth, "changing password")
	if err != nil {
		return err
	}
	defer s.close(ctx, b, true)
	// The verifier, not the plaintext, goes into the SQL text, so the new
	// password cannot end up in server logs.
	if s.conn != nil {
		_, err = s.conn.Exec(ctx, "ALTER ROLE CURRENT_USER PASSWORD "+pgsql.QuoteLiteral(verifier))
	} else {
		err = selfhosted.SetVerifier(ctx, b.psqlIn(s.id, inst), verifier)
	}
	if err != nil {
		return fmt.Errorf("changing password in container %q: %w", inst.Name, err)
	}
	return nil
}

// Delete implements backend.Backend.
func (b *Backend) Delete(ctx context.Context, inst backend.Instance, auth backend.Auth, force bool) error {
	if err := b.engine(ctx); err != nil {
		return err
	}
	s, err := b.login(ctx, inst, auth)
	if errors.Is(err, errNotOurs) {
		return nil // the name is someone else's now: nothing of ours is left
	}
	if err != nil && !errors.Is(err, backend.ErrWrongPassword) && inst.ContainerID != "" && b.gone(ctx, inst.ContainerID) {
		return nil // a concurrent destroy removed it while we logged in
	}
	if err != nil {
		return fmt.Errorf("deleting container %q: %w", inst.Name, err)
	}
	if s == nil {
		return nil // already gone
	}
	// The tenant owns the whole server, so sessions count in every
	// database, not only inst.DBName.
	n, err := s.sessions(ctx, b, inst)
	switch {
	case err != nil && b.gone(ctx, s.id):
		// A concurrent destroy removed it under our session.
		s.close(ctx, b, false)
		return nil
	case err != nil:
		err = fmt.Errorf("counting sessions in container %q: %w", inst.Name, err)
	case n > 0 && !force:
		err = &backend.SessionsError{DBName: inst.DBName, Count: n}
	}
	if err != nil {
		s.close(ctx, b, true)
		return err
	}
	// Removing the container ends the other sessions when forced. It is
	// removed by the ID that was proven ours: IDs are never reused.
	s.close(ctx, b, false)
	if err := b.remove(ctx, s.id); err != nil {
		return fmt.Errorf("removing container %q: %w", inst.Name, err)
	}
	return nil
}

// gone reports whether the container no longer exists, waiting briefly
// for one that is being removed.
func (b *Backend) gone(ctx context.Context, id string) bool {
	for attempt := 0; ; attempt++ {
		c, err := b.cli.ContainerInspect(ctx, id)
		if cerrdefs.IsNotFound(err) {
			return true
		}
		if err != nil || c.State == nil || c.State.Status != "removing" || attempt >= 50 {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Purge implements backend.Backend. It authenticates nothing, so it only
// removes a container that carries the instance's proof.
func (b *Backend) Purge(ctx context.Context, inst backend.Instance) error {
	if err := b.engine(ctx); err != nil {
		return err
	}
	if inst.Proof.Legacy() {
		return fmt.Errorf("purging container %q: %w", inst.Name, backend.ErrLegacy)
	}
	c, ok, ours, err := b.find(ctx, inst)
	if err != nil || !ok || !ours {
		return err
	}
	if err := b.remove(ctx, c.ID); err != nil {
		return fmt.Errorf("purging container %q: %w", inst.Name, err)
	}
	return nil
}

// errNotOurs: the container with the instance's name or ID is not its.
var errNotOurs = errors.New("container does not carry the instance's ownership proof")

// session is a tenant login into an instance's server.
type session struct {
	conn *pgx.Conn
	id   string
	// started is set when the container was stopped and login started it.
	started bool
}

// login connects as the instance's user. It returns nil, nil when the
// container is gone, and an error wrapping backend.ErrWrongPassword when
// the password is refused.
//
// A stopped container is started for the login and stopped again when the
// session closes (unless it is about to be removed). Removing it without
// authenticating would make the password check depend on whether the
// container happens to run, and a container that cannot start any more is
// exactly the case where a human should look before data goes: the error
// carries its last log lines.
func (b *Backend) login(ctx context.Context, inst backend.Instance, auth backend.Auth) (*session, error) {
	c, ok, ours, err := b.find(ctx, inst)
	if err != nil || !ok {
		return nil, err
	}
	if !ours {
		return nil, fmt.Errorf("%w: %w", notOurs(inst), errNotOurs)
	}
	s := &session{id: c.ID}
	if c.State == nil || !c.State.Running {
		s.started = true
		if err := b.cli.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
			// A start cut off by ctx may still happen: stop it anyway.
			s.close(ctx, b, true)
			return nil, fmt.Errorf("starting stopped container to log in: %w", err)
		}
	}
	// Read after a start: a manual start may reset the count.
	c, err = b.cli.ContainerInspect(ctx, c.ID)
	if err != nil {
		s.close(ctx, b, true)
		return nil, fmt.Errorf("inspecting: %w", err)
	}
	wctx, cancel := context.WithTimeout(ctx, existingReadyTimeout)
	defer cancel()
	_, err = b.untilLogin(wctx, c.ID, c.RestartCount, func(port int) error {
		if auth.Password == "" {
			// A write-only password is not kept: compare the verifier
			// the provider set last with the server's, from inside.
			ectx, cancel := context.WithTimeout(wctx, selfhosted.CheckAttemptTimeout)
			defer cancel()
			return selfhosted.CheckVerifier(ectx, b.psqlIn(c.ID, inst), inst.Username, auth.Verifier)
		}
		actx, cancel := context.WithTimeout(wctx, attemptTimeout)
		defer cancel()
		t := b.target(port, inst.Username, auth.Password, inst.DBName)
		conn, err := t.ConnectOnce(actx)
		if err == nil {
			s.conn = conn
		}
		return err
	})
	if err == nil {
		return s, nil
	}
	var stop *selfhosted.StopWaiting
	if errors.As(err, &stop) {
		s.close(ctx, b, true)
		return nil, stop.Err
	}
	var logs string
	if s.started {
		lctx, cancel := cleanupContext(ctx)
		logs = "; last log lines:\n" + b.tailLogs(lctx, c.ID)
		cancel()
	}
	s.close(ctx, b, true)
	if lerr := selfhosted.LoginError(inst.Username, err); lerr != nil {
		return nil, lerr
	}
	return nil, fmt.Errorf("logging in as %q: %w%s", inst.Username, err, logs)
}

// Authenticate implements backend.Backend.
func (b *Backend) Authenticate(ctx context.Context, inst backend.Instance, auth backend.Auth) error {
	if err := b.engine(ctx); err != nil {
		return err
	}
	s, err := b.provenSession(ctx, inst, auth, "authenticating")
	if err != nil {
		return err
	}
	s.close(ctx, b, true)
	return nil
}

// provenSession logs in to the instance's container, which must exist and
// carry the instance's proof, authenticated by auth; doing names the act
// in errors.
func (b *Backend) provenSession(ctx context.Context, inst backend.Instance, auth backend.Auth, doing string) (*session, error) {
	s, err := b.login(ctx, inst, auth)
	if errors.Is(err, errNotOurs) {
		return nil, notOurs(inst)
	}
	if err != nil {
		return nil, fmt.Errorf("%s in container %q: %w", doing, inst.Name, err)
	}
	if s == nil {
		return nil, fmt.Errorf("%s in container %q: container does not exist", doing, inst.Name)
	}
	return s, nil
}

// sessions counts the client sessions other than the session's own.
func (s *session) sessions(ctx context.Context, b *Backend, inst backend.Instance) (int, error) {
	if s.conn != nil {
		var n int
		err := s.conn.QueryRow(ctx, selfhosted.SessionsQuery).Scan(&n)
		return n, err
	}
	return selfhosted.CountSessions(ctx, b.psqlIn(s.id, inst))
}

// close ends the login and, with restore, stops a container that login
// started, leaving it as it was found.
func (s *session) close(ctx context.Context, b *Backend, restore bool) {
	cctx, cancel := cleanupContext(ctx)
	defer cancel()
	if s.conn != nil {
		_ = s.conn.Close(cctx)
	}
	if restore && s.started {
		// Best effort: whatever the caller reports matters more.
		_ = b.cli.ContainerStop(cctx, s.id, container.StopOptions{})
	}
}
