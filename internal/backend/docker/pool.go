package docker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/go-connections/nat"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/backend/selfhosted"
	"github.com/postgraas/terraform-provider-postgraas/internal/faultinject"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// Warm pools (DESIGN.md, "Warm pools"): idle containers made ahead of any
// instance, claimed by a create and personalised into the instance.

// Labels of a pool container. It carries no LabelInstance, so instance
// listings never show it.
const (
	LabelPool       = "postgraas.pool"
	LabelPoolMember = "postgraas.pool.member"
	LabelPoolProof  = "postgraas.pool.proof"
)

// poolBootstrap is the bootstrap superuser and database of a pool
// container, renamed to the instance's on claim.
const poolBootstrap = "postgraas_pool"

// poolClaimRole is the one-off superuser a claim renames the bootstrap
// superuser from (a session cannot rename its own user).
const poolClaimRole = "postgraas_pool_claim"

// PoolMember is a pool container to make.
type PoolMember = backend.PoolMember

var _ backend.Pooled = (*Backend)(nil)

// PoolImage implements backend.Pooled.
func (b *Backend) PoolImage(image string) string {
	if image == "" {
		return b.cfg.Image
	}
	return image
}

// PoolContainer implements backend.Pooled.
func (b *Backend) PoolContainer(ctx context.Context, m PoolMember) (string, error) {
	if err := b.engine(ctx); err != nil {
		return "", err
	}
	name := PoolContainerName(m.Pool, m.ID)
	c, err := b.cli.ContainerInspect(ctx, name)
	if cerrdefs.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("inspecting pool container %q: %w", name, err)
	}
	if c.Name != "/"+name || c.Config == nil || m.Proof == "" ||
		c.Config.Labels[LabelPoolMember] != strconv.FormatInt(m.ID, 10) || c.Config.Labels[LabelPoolProof] != m.Proof {
		return "", nil
	}
	return c.ID, nil
}

// NameInUse implements backend.Pooled. Inspect also finds a container by
// an ID prefix, so only an exact name counts.
func (b *Backend) NameInUse(ctx context.Context, name string) (bool, error) {
	if err := b.engine(ctx); err != nil {
		return false, err
	}
	c, err := b.cli.ContainerInspect(ctx, name)
	if cerrdefs.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("looking for a container named %q: %w", name, err)
	}
	return c.Name == "/"+name, nil
}

// RemovePoolContainer implements backend.Pooled.
func (b *Backend) RemovePoolContainer(ctx context.Context, id string, m PoolMember) error {
	if err := b.engine(ctx); err != nil {
		return err
	}
	c, err := b.cli.ContainerInspect(ctx, id)
	if cerrdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("inspecting pool container %s: %w", id, err)
	}
	if !memberProven(c, id, m) {
		return fmt.Errorf("container %s does not carry the proof of pool member %d; it was left alone", id, m.ID)
	}
	return b.remove(ctx, id)
}

// PoolContainerName is the name of a pool member's container.
func PoolContainerName(pool string, id int64) string {
	return "postgraas-pool-" + pool + "-" + strconv.FormatInt(id, 10)
}

// StartPoolMember creates and starts m's container and returns its ID at
// once: its initdb runs inside Docker, so nothing here waits for it.
func (b *Backend) StartPoolMember(ctx context.Context, m PoolMember) (string, error) {
	if err := b.engine(ctx); err != nil {
		return "", err
	}
	if m.Proof == "" {
		return "", errors.New("a pool container needs a pool proof")
	}
	img := m.Image
	if img == "" {
		img = b.cfg.Image
	}
	if err := b.ensureImage(ctx, img); err != nil {
		return "", err
	}
	name := PoolContainerName(m.Pool, m.ID)
	port := nat.Port(pgPort)
	cfg := &container.Config{
		Image: img,
		// A random one-time password kept nowhere: the claim works over
		// the unix socket and sets the instance's verifier.
		Env: []string{
			"POSTGRES_USER=" + poolBootstrap,
			"POSTGRES_PASSWORD=" + selfhosted.RandomSecret(),
			"POSTGRES_DB=" + poolBootstrap,
		},
		ExposedPorts: nat.PortSet{port: {}},
		Labels: map[string]string{
			LabelPool:       m.Pool,
			LabelPoolMember: strconv.FormatInt(m.ID, 10),
			LabelPoolProof:  m.Proof,
			LabelImage:      img,
		},
	}
	host := &container.HostConfig{
		PortBindings:  nat.PortMap{port: {{HostIP: b.cfg.BindAddress, HostPort: ""}}},
		RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyUnlessStopped},
	}
	cctx, cancel := cleanupContext(ctx)
	defer cancel()
	resp, err := b.cli.ContainerCreate(cctx, cfg, host, nil, nil, name)
	if cerrdefs.IsConflict(err) {
		return "", containerConflict(name)
	}
	if err != nil {
		return "", fmt.Errorf("creating pool container %q from image %q: %w", name, img, err)
	}
	if b.created != nil {
		b.created(resp.ID)
	}
	if err := b.cli.ContainerStart(ctx, resp.ID, container.StartOptions{}); err != nil {
		rerr := b.remove(cctx, resp.ID)
		return "", errors.Join(fmt.Errorf("starting pool container %q: %w", name, err), rerr)
	}
	return resp.ID, nil
}

// poolProven reports whether c is the pool container that inst's row
// claimed: the recorded container, carrying the recorded pool labels.
func poolProven(c container.InspectResponse, inst backend.Instance) bool {
	if inst.PoolMember == 0 || inst.PoolProof == "" || inst.ContainerID == "" || c.Config == nil {
		return false
	}
	l := c.Config.Labels
	return c.ID == inst.ContainerID &&
		l[LabelPoolMember] == strconv.FormatInt(inst.PoolMember, 10) &&
		l[LabelPoolProof] == inst.PoolProof
}

// memberProven reports whether c is container id of pool member m: the
// proof a claim records, checked before a member's container is changed or
// removed.
func memberProven(c container.InspectResponse, id string, m PoolMember) bool {
	return poolProven(c, backend.Instance{ContainerID: id, PoolMember: m.ID, PoolProof: m.Proof})
}

// psqlArg quotes a psql meta-command argument.
func psqlArg(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

// personaliseScript makes a pool container's server what a cold create of
// spec makes: its bootstrap superuser (OID 10, as POSTGRES_USER is) renamed
// to the instance user with the verifier, its database renamed to the
// instance database. It runs as the bootstrap superuser in "postgres".
func personaliseScript(spec backend.Spec, verifier string) string {
	user, db := spec.Username, spec.DBName
	var s strings.Builder
	s.WriteString("CREATE ROLE " + poolClaimRole + " SUPERUSER LOGIN;\n")
	s.WriteString("\\connect postgres " + poolClaimRole + "\n")
	if user != poolBootstrap {
		s.WriteString("ALTER ROLE " + poolBootstrap + " RENAME TO " + pgsql.QuoteIdent(user) + ";\n")
	}
	s.WriteString("ALTER ROLE " + pgsql.QuoteIdent(user) + " PASSWORD " + pgsql.QuoteLiteral(verifier) + ";\n")
	switch db {
	case poolBootstrap:
	case "postgres":
		s.WriteString("DROP DATABASE " + poolBootstrap + ";\n")
	default:
		s.WriteString("ALTER DATABASE " + poolBootstrap + " RENAME TO " + pgsql.QuoteIdent(db) + ";\n")
	}
	s.WriteString("\\connect postgres " + psqlArg(user) + "\n")
	s.WriteString("DROP ROLE " + poolClaimRole + ";\n\\q\n")
	return s.String()
}

// ClaimPool turns the pool container id, which spec's row has just
// claimed (its ContainerID, PoolMember and PoolProof recorded), into the
// instance: renamed to spec.Name, personalised, and ready as a cold
// create is (the instance's login works on the published port). A failure
// leaves the container to the caller's undo, which purges it by proof.
func (b *Backend) ClaimPool(ctx context.Context, id string, m PoolMember, spec backend.Spec) (backend.Created, error) {
	if err := b.engine(ctx); err != nil {
		return backend.Created{}, err
	}
	c, err := b.cli.ContainerInspect(ctx, id)
	if cerrdefs.IsNotFound(err) {
		return backend.Created{}, backend.ErrPoolContainerUnusable
	}
	if err != nil {
		return backend.Created{}, fmt.Errorf("inspecting the claimed pool container: %w", err)
	}
	// The rename and the personalising SQL act on this container: it must
	// be member m's (ID and pool labels are immutable, so this holds for
	// everything below).
	if !memberProven(c, id, m) {
		return backend.Created{}, fmt.Errorf("container %s does not carry the proof of pool member %d; it was left alone: %w",
			id, m.ID, backend.ErrNotOurs)
	}
	if c.State == nil || !c.State.Running || c.State.Restarting {
		return backend.Created{}, backend.ErrPoolContainerUnusable
	}
	if c.Name != "/"+spec.Name {
		if err := b.cli.ContainerRename(ctx, id, spec.Name); err != nil {
			if cerrdefs.IsConflict(err) {
				return backend.Created{}, containerConflict(spec.Name)
			}
			return backend.Created{}, fmt.Errorf("renaming the claimed pool container to %q: %w", spec.Name, err)
		}
	}
	verifier := spec.Verifier
	if verifier == "" {
		if verifier, err = pgsql.ScramVerifier(spec.Password); err != nil {
			return backend.Created{}, err
		}
	}
	personalised := false
	var ssl string
	attempt := func(port int) error {
		if !personalised {
			// The image's entrypoint initialises with a server on the unix
			// socket only; a TCP answer (refusing a password nobody knows)
			// means the real server runs and init is over.
			probe := b.target(port, poolBootstrap, selfhosted.RandomSecret(), "postgres")
			pctx, cancel := context.WithTimeout(ctx, attemptTimeout)
			conn, err := probe.ConnectOnce(pctx)
			cancel()
			if err == nil {
				conn.Close(context.WithoutCancel(ctx))
			} else if !pgsql.IsAuthFailure(err) {
				return err
			}
			pool := backend.Instance{Name: spec.Name, DBName: "postgres", Username: poolBootstrap, ContainerID: id}
			if _, err := b.psql(ctx, id, pool, personaliseScript(spec, verifier), verifier); err != nil {
				return &selfhosted.StopWaiting{Err: fmt.Errorf("personalising the claimed pool container: %w", err)}
			}
			personalised = true
			faultinject.Pause(ctx, "docker.pool_personalised")
		}
		var err error
		ssl, err = selfhosted.SSLSetting(ctx, b.target(port, spec.Username, spec.Password, spec.DBName), attemptTimeout)
		return err
	}
	port, err := b.untilLogin(ctx, id, c.RestartCount, attempt)
	if err != nil {
		return backend.Created{}, fmt.Errorf("container %q (claimed from a warm pool) did not become ready: %w", spec.Name, err)
	}
	img := c.Config.Image
	if l := c.Config.Labels[LabelImage]; l != "" {
		img = l
	}
	return b.createdOf(spec, id, img, port, ssl), nil
}
