// Package docker is the backend that gives every instance its own PostgreSQL
// container on a Docker engine. The tenant is superuser inside their
// container: they get a whole server, not a database on a shared one.
package docker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
	"github.com/postgraas/terraform-provider-postgraas/internal/reach"
)

// Labels put on every container, so instances (and orphans left by a
// crashed provider) can be found from the Docker side alone.
const (
	LabelInstance   = "postgraas.instance" // "true"
	LabelInstanceID = "postgraas.instance.id"
	LabelName       = "postgraas.instance.name"
	LabelImage      = "postgraas.image"
	// LabelProof carries the ownership proof of the meta DB row (see
	// backend.Proof). Labels cannot be changed after a container is made,
	// and only someone with access to the engine can make one.
	LabelProof = "postgraas.instance.proof"
)

const (
	defaultImage        = "postgres:17"
	defaultBindAddress  = "0.0.0.0"
	defaultPollInterval = 20 * time.Millisecond
	// inspectInterval is how often the engine is asked, while waiting for
	// a login, whether the container still runs.
	inspectInterval = 250 * time.Millisecond
	pgPort          = "5432/tcp"
	// attemptTimeout bounds one login attempt while waiting for readiness;
	// docker-proxy accepts TCP before the server listens, so attempts
	// mostly fail fast, and a hanging one must not eat the whole budget.
	attemptTimeout = 2 * time.Second
	// cleanupTimeout bounds removal after a failure; it runs on a context
	// detached from the caller's, which may be the one that expired.
	cleanupTimeout = 60 * time.Second
	// logFetch lines are read from a failed container's log; logTail of
	// them are shown, after runs of repeats are folded.
	logFetch = "200"
	logTail  = 30
)

// Config configures the backend. Zero values mean the documented defaults.
type Config struct {
	// Host is a DOCKER_HOST-style address (unix://, tcp://, ssh://); ""
	// takes DOCKER_HOST and friends from the environment. TLS settings of
	// tcp:// always come from DOCKER_TLS_VERIFY / DOCKER_CERT_PATH; ssh://
	// runs the system ssh client (see ssh.go).
	Host string
	// Image is used when a spec names none; "" means postgres:17.
	Image string
	// BindAddress is where port 5432 is published; "" means 0.0.0.0.
	BindAddress string
	// AdvertisedHost is the host reported to users; "" derives it from
	// Host (see DefaultAdvertisedHost).
	AdvertisedHost string
	// ReadyPollInterval is the pause between login attempts while a new
	// container starts; 0 means 20ms.
	ReadyPollInterval time.Duration
	// ConnectTimeout bounds the engine's first answer (and each login to
	// an instance's published port while it is waited for is bounded by
	// attemptTimeout); 0 means reach.DefaultConnectTimeout.
	ConnectTimeout time.Duration
}

// Backend implements backend.Backend on a Docker engine. It is safe for
// concurrent use.
type Backend struct {
	cli *client.Client
	cfg Config
	// created, when set (by tests), is called as soon as Create has made a
	// container, so a test can learn its volumes before a failure removes it.
	created func(id string)
	// execed, when set (by tests), sees every exec the backend starts.
	execed func(container.ExecOptions)

	// engineAddr is the engine's address as diagnostics show it; dialNet
	// and dialAddr are where a plain dial reaches it ("" for ssh://).
	engineAddr        string
	dialNet, dialAddr string
	// answered is set once the engine has answered a ping; until then,
	// callers share one ping (pinging), bounded by ConnectTimeout.
	answered atomic.Bool
	pinging  pgsql.Shared
	// ssh is the engine's ssh address for an ssh:// engine, else nil.
	ssh *sshTarget
}

var _ backend.Backend = (*Backend)(nil)

// New builds the client without contacting the engine: a plan must work
// while the engine is down, so the first API call is the first real use.
func New(cfg Config) (*Backend, error) {
	envHost := cfg.Host
	if envHost == "" {
		envHost = os.Getenv(client.EnvOverrideHost)
	}
	var opts []client.Opt
	var ssh *sshTarget
	if strings.HasPrefix(envHost, "ssh://") {
		t, err := parseSSHHost(envHost)
		if err != nil {
			return nil, err
		}
		ssh = &t
		opts = append(sshClientOpts(t), client.WithAPIVersionNegotiation())
	} else {
		// FromEnv first so TLS settings apply, then an explicit Host wins.
		opts = []client.Opt{client.FromEnv, client.WithAPIVersionNegotiation()}
		if cfg.Host != "" {
			opts = append(opts, client.WithHost(cfg.Host))
		}
	}
	cli, err := client.NewClientWithOpts(opts...)
	if err != nil {
		return nil, fmt.Errorf("configuring docker client for %q: %w", envHost, err)
	}
	if cfg.Image == "" {
		cfg.Image = defaultImage
	}
	if cfg.BindAddress == "" {
		cfg.BindAddress = defaultBindAddress
	}
	if cfg.AdvertisedHost == "" {
		cfg.AdvertisedHost = DefaultAdvertisedHost(envHost)
	}
	if cfg.ReadyPollInterval <= 0 {
		cfg.ReadyPollInterval = defaultPollInterval
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = reach.DefaultConnectTimeout
	}
	b := &Backend{cli: cli, cfg: cfg, engineAddr: cli.DaemonHost(), ssh: ssh}
	if strings.HasPrefix(envHost, "ssh://") {
		// The client's own host is a dummy there; ssh:// addresses
		// carry no password (parseSSHHost refuses one).
		b.engineAddr = envHost
	} else if u, err := client.ParseHostURL(b.engineAddr); err == nil && (u.Scheme == "unix" || u.Scheme == "tcp") {
		b.dialNet, b.dialAddr = u.Scheme, u.Host
	}
	if u, err := url.Parse(b.engineAddr); err == nil && u.User != nil {
		b.engineAddr = u.Redacted()
	}
	return b, nil
}

// DefaultAdvertisedHost is the host users connect to when none is
// configured: the engine's host for a remote engine, else localhost.
func DefaultAdvertisedHost(dockerHost string) string {
	u, err := url.Parse(dockerHost)
	if err == nil && (u.Scheme == "tcp" || u.Scheme == "ssh") && u.Hostname() != "" {
		return u.Hostname()
	}
	return "localhost"
}

// Kind implements backend.Backend.
func (b *Backend) Kind() string { return backend.KindDocker }

// StatusAfterCreate implements backend.Backend: the container's state.
func (b *Backend) StatusAfterCreate() string { return "running" }

// TakesImage implements backend.Backend.
func (b *Backend) TakesImage() bool { return true }

// CheckSpec implements backend.Backend. The official image takes any
// user, database and password the provider's validators allow.
func (b *Backend) CheckSpec(backend.Spec) error { return nil }

// SameLogin implements backend.Backend.
func (b *Backend) SameLogin(x, y string) bool { return x == y }

// Close implements backend.Backend. It closes idle connections, which
// ends their ssh processes on an ssh:// host.
func (b *Backend) Close() { _ = b.cli.Close() }

// ListContainers returns every container labelled as a postgraas instance,
// running or not. Comparing their instance-id labels with the meta DB
// finds orphans.
func (b *Backend) ListContainers(ctx context.Context) ([]container.Summary, error) {
	if err := b.engine(ctx); err != nil {
		return nil, err
	}
	list, err := b.cli.ContainerList(ctx, container.ListOptions{
		All:     true,
		Filters: filters.NewArgs(filters.Arg("label", LabelInstance+"=true")),
	})
	if err != nil {
		return nil, fmt.Errorf("listing postgraas containers: %w", err)
	}
	return list, nil
}

// dialHost is where the provider itself reaches a published port: the bind
// address when it is a specific one, else the advertised host.
func (b *Backend) dialHost() string {
	ip := net.ParseIP(b.cfg.BindAddress)
	if ip == nil || ip.IsUnspecified() {
		return b.cfg.AdvertisedHost
	}
	return b.cfg.BindAddress
}

// hostPort reads the published host port of 5432 back from the engine. It
// changes whenever the container starts again (Docker picks a fresh one),
// so the one recorded at create time can be stale.
func hostPort(c container.InspectResponse) (int, error) {
	if c.NetworkSettings == nil {
		return 0, errors.New("no network settings")
	}
	for _, pb := range c.NetworkSettings.Ports[pgPort] {
		if port, err := strconv.Atoi(pb.HostPort); err == nil && port > 0 {
			return port, nil
		}
	}
	return 0, fmt.Errorf("port %s is not published", pgPort)
}
