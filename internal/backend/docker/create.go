package docker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/pkg/stdcopy"
	"github.com/docker/go-connections/nat"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/backend/selfhosted"
	"github.com/postgraas/terraform-provider-postgraas/internal/faultinject"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// Create implements backend.Backend.
func (b *Backend) Create(ctx context.Context, spec backend.Spec) (backend.Created, error) {
	if err := b.engine(ctx); err != nil {
		return backend.Created{}, err
	}
	img := spec.Image
	if img == "" {
		img = b.cfg.Image
	}
	// Checked before anything is pulled or made, so a conflict leaves no
	// trace; the 409 from ContainerCreate below covers the race.
	if existing, err := b.cli.ContainerInspect(ctx, spec.Name); err == nil {
		// Inspect also matches ID prefixes: only the exact name conflicts.
		if existing.Name == "/"+spec.Name {
			return backend.Created{}, containerConflict(spec.Name)
		}
	} else if !cerrdefs.IsNotFound(err) {
		return backend.Created{}, fmt.Errorf("checking for container %q: %w", spec.Name, err)
	}
	if err := b.ensureImage(ctx, img); err != nil {
		return backend.Created{}, err
	}

	if spec.Proof.Legacy() {
		return backend.Created{}, errors.New("a create needs an ownership proof")
	}
	bootstrap := selfhosted.RandomSecret()
	id, err := b.createContainer(ctx, spec, img, bootstrap)
	if err != nil {
		return backend.Created{}, err
	}
	faultinject.Pause(ctx, "docker.container_created")
	port, ssl, err := b.startAndWait(ctx, id, spec, bootstrap)
	if err != nil {
		return backend.Created{}, b.failedStart(ctx, spec.Name, id, err)
	}
	return b.createdOf(spec, id, img, port, ssl), nil
}

// createdOf is what a create (cold or claimed) of spec made: container id
// of image img, ready on the published port, its TLS as ssl reported.
func (b *Backend) createdOf(spec backend.Spec, id, img string, port int, ssl string) backend.Created {
	return backend.Created{
		Host:        b.cfg.AdvertisedHost,
		Port:        port,
		Username:    spec.Username,
		ContainerID: id,
		Image:       img,
		SSLMode:     backend.SSLModeFor(ssl),
	}
}

func containerConflict(name string) error {
	return &backend.ConflictError{Kind: "container", Name: name, Attribute: "name"}
}

// ensureImage pulls img unless the engine already has it.
func (b *Backend) ensureImage(ctx context.Context, img string) error {
	if _, err := b.cli.ImageInspect(ctx, img); err == nil {
		return nil
	} else if !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("inspecting image %q: %w", img, err)
	}
	if err := b.pull(ctx, img); err != nil {
		return fmt.Errorf("image %q is not available locally and could not be pulled: %w", img, err)
	}
	return nil
}

func (b *Backend) pull(ctx context.Context, img string) error {
	rc, err := b.cli.ImagePull(ctx, img, image.PullOptions{})
	if err != nil {
		return err
	}
	defer rc.Close()
	if err := streamError(rc); err != nil {
		return err
	}
	// A stream that ends cleanly can still leave no image (e.g. cancelled).
	if _, err := b.cli.ImageInspect(ctx, img); err != nil {
		return fmt.Errorf("image missing after pull: %w", err)
	}
	return nil
}

// streamError reads a pull's (or a build's) progress stream to its end
// and returns the failure it reports. The engine answers 200 and reports
// failures inside the stream, so it must be read through to know the
// outcome.
func streamError(r io.Reader) error {
	dec := json.NewDecoder(r)
	for {
		var msg struct {
			Error       string `json:"error"`
			ErrorDetail struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&msg); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return fmt.Errorf("reading progress: %w", err)
		}
		if msg.ErrorDetail.Message != "" {
			return errors.New(msg.ErrorDetail.Message)
		}
		if msg.Error != "" {
			return errors.New(msg.Error)
		}
	}
}

func (b *Backend) createContainer(ctx context.Context, spec backend.Spec, img, bootstrap string) (string, error) {
	port := nat.Port(pgPort)
	cfg := &container.Config{
		Image: img,
		// The container's config is readable by anyone with engine access,
		// forever: it gets a one-time bootstrap secret, replaced by the
		// real password's verifier as soon as the server is up.
		Env: []string{
			"POSTGRES_USER=" + spec.Username,
			"POSTGRES_PASSWORD=" + bootstrap,
			"POSTGRES_DB=" + spec.DBName,
		},
		ExposedPorts: nat.PortSet{port: {}},
		Labels: map[string]string{
			LabelInstance:   "true",
			LabelInstanceID: strconv.FormatInt(spec.InstanceID, 10),
			LabelName:       spec.Name,
			LabelImage:      img,
			LabelProof:      spec.Proof.Value,
		},
	}
	host := &container.HostConfig{
		// HostPort "" lets Docker choose a free port atomically, unlike
		// postgraas' bind-close-then-ask race.
		PortBindings:  nat.PortMap{port: {{HostIP: b.cfg.BindAddress, HostPort: ""}}},
		RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyUnlessStopped},
	}
	// The engine finishes a create even when the client gives up on it, so
	// a create cut off by ctx could leave a container nobody knows about.
	// Waiting for the answer on a detached context yields the ID to clean
	// up; an expired ctx then fails the start that follows.
	cctx, cancel := cleanupContext(ctx)
	defer cancel()
	resp, err := b.cli.ContainerCreate(cctx, cfg, host, nil, nil, spec.Name)
	if cerrdefs.IsConflict(err) {
		return "", containerConflict(spec.Name)
	}
	if err != nil {
		return "", fmt.Errorf("creating container %q from image %q: %w", spec.Name, img, err)
	}
	if b.created != nil {
		b.created(resp.ID)
	}
	return resp.ID, nil
}

// startAndWait starts the container, waits until the bootstrap login
// works, then sets the real password (as its verifier) over that login,
// which makes the bootstrap secret in the container's config useless. It
// returns the published host port.
func (b *Backend) startAndWait(ctx context.Context, id string, spec backend.Spec, bootstrap string) (port int, ssl string, err error) {
	if err := b.cli.ContainerStart(ctx, id, container.StartOptions{}); err != nil {
		return 0, "", fmt.Errorf("starting: %w", err)
	}
	faultinject.Pause(ctx, "docker.started")
	verifier := spec.Verifier
	if verifier == "" {
		if verifier, err = pgsql.ScramVerifier(spec.Password); err != nil {
			return 0, "", err
		}
	}
	var p selfhosted.Personalisation
	port, err = b.untilLogin(ctx, id, 0, b.personaliseAttempt(ctx, id, spec, bootstrap, verifier, &p))
	// What cannot clear by waiting: the server will never take the login.
	var stopped *containerStopped
	switch {
	case err == nil:
	case errors.As(err, &stopped):
		return 0, "", &backend.StartError{Reason: stopped.Error()}
	case pgsql.Code(err) == pgsql.CodeInvalidCatalogName:
		return 0, "", &backend.StartError{Reason: fmt.Sprintf("database %q does not exist in the new container (the image did not "+
			"create POSTGRES_DB)", spec.DBName)}
	case pgsql.IsAuthFailure(err):
		return 0, "", &backend.StartError{Reason: fmt.Sprintf("the new server refused the login of %q with the bootstrap password "+
			"it was started with (%s; the image did not honour POSTGRES_USER and POSTGRES_PASSWORD)", spec.Username, selfhosted.ServerSaid(err))}
	}
	return port, p.SSL, err
}

// failedStart removes the container of a create that failed after making
// it, and says why, with the server's last log lines.
func (b *Backend) failedStart(ctx context.Context, name, id string, err error) error {
	ctx, cancel := cleanupContext(ctx)
	defer cancel()
	var start *backend.StartError
	if errors.As(err, &start) {
		// The server logged why before it answered, but Docker's log
		// driver copies output asynchronously: let the last lines arrive.
		time.Sleep(logSettle)
	}
	logs := b.tailLogs(ctx, id)
	rerr := b.remove(ctx, id)
	if start != nil && rerr == nil {
		start.Logs = logs
		return fmt.Errorf("starting container %q: %w", name, start)
	}
	suffix := "; no log output"
	if logs != "" {
		suffix = "; last log lines:\n" + logs
	}
	if rerr != nil {
		// Not a StartError: the diagnostic must not say it was removed.
		return fmt.Errorf("container %q did not become ready: %v; removing it failed too: %v%s", name, err, rerr, suffix)
	}
	return fmt.Errorf("container %q did not become ready: %w%s", name, err, suffix)
}

// personaliseAttempt is one readiness attempt of a new container: log in
// with the bootstrap secret and set the instance's verifier.
func (b *Backend) personaliseAttempt(ctx context.Context, id string, spec backend.Spec, bootstrap, verifier string, p *selfhosted.Personalisation) func(port int) error {
	return func(port int) error {
		err := selfhosted.Personalise(ctx, b.target(port, spec.Username, bootstrap, spec.DBName), verifier, attemptTimeout, p)
		if err != nil && p.Sent && pgsql.IsAuthFailure(err) {
			// An earlier attempt's ALTER ROLE can commit after that attempt
			// stopped waiting for its answer (seen on a loaded CI machine):
			// the bootstrap secret is then gone because the verifier is
			// already ours. Only the server can tell: ask it from inside.
			inst := backend.Instance{Name: spec.Name, DBName: spec.DBName, Username: spec.Username, ContainerID: id}
			if secret, _, verr := b.storedVerifier(ctx, id, inst); verr == nil && secret == verifier {
				// The lost answer carried the ssl setting too.
				p.SSL, err = selfhosted.SSLSetting(ctx, b.target(port, spec.Username, spec.Password, spec.DBName), attemptTimeout)
				return err
			}
		}
		return err
	}
}

// untilLogin calls attempt with the published port until it succeeds, the
// credentials are refused, the container stops, the login's database stays
// missing (see missingDBGrace), or ctx ends. The official
// image initialises with a server that listens only on its unix socket, so
// a TCP login means the real server is up; before that docker-proxy
// accepts and resets connections, which is expected. Every failure but a
// refusal of the credentials is retried (a full or starting server too),
// every ReadyPollInterval for the first readyFastFor, then less often
// (readyPause). restarts is the
// container's restart count when it was started: under unless-stopped a
// crashing server is restarted, and a higher count means it exited.
func (b *Backend) untilLogin(ctx context.Context, id string, restarts int, attempt func(port int) error) (int, error) {
	var lastErr error
	var port int
	var inspected, noDB time.Time
	start, attempts := time.Now(), 0
	// check reads the container's state and port. It runs every
	// inspectInterval rather than before every attempt: attempts are tens
	// of milliseconds apart, and an API call each time would cost the
	// engine more than the attempt itself.
	check := func() error {
		c, err := b.cli.ContainerInspect(ctx, id)
		if err != nil {
			return fmt.Errorf("inspecting: %w", err)
		}
		if c.State != nil && (!c.State.Running || c.State.Restarting || c.RestartCount > restarts) {
			s := &containerStopped{status: c.State.Status, restarts: c.RestartCount - restarts}
			if !c.State.Running || c.State.Restarting {
				s.code, s.known = c.State.ExitCode, true
			} else {
				// Docker has started it again, and a running
				// container's exit code reads 0.
				s.code, s.known = b.lastExit(ctx, c)
			}
			return s
		}
		p, err := hostPort(c)
		if err != nil {
			return err
		}
		port, inspected = p, time.Now()
		return nil
	}
	for {
		if port == 0 || time.Since(inspected) >= inspectInterval {
			if err := check(); err != nil {
				return 0, err
			}
		}
		attempts++
		if lastErr = attempt(port); lastErr == nil {
			// Only a login to the server that was started counts: make
			// sure the container has not restarted since it was looked at.
			if err := check(); err != nil {
				return 0, err
			}
			return port, nil
		}
		var stop *selfhosted.StopWaiting
		if errors.As(lastErr, &stop) {
			return 0, lastErr
		}
		if pgsql.IsAuthFailure(lastErr) {
			// The server is up and refuses these credentials: waiting
			// longer will not help.
			return 0, fmt.Errorf("login refused: %w", lastErr)
		}
		// A missing database must stay missing for missingDBGrace. The
		// official image creates POSTGRES_DB with a temporary server
		// that listens on its unix socket only, so a TCP login reaches
		// the final server, which has it: there, the first 3D000 is
		// final. Other images may open TCP while still setting up, and
		// two seconds is little next to a create's minutes. A refused
		// password gets no grace: a role and its password come from
		// initdb, before any server runs.
		if pgsql.Code(lastErr) != pgsql.CodeInvalidCatalogName {
			noDB = time.Time{}
		} else if noDB.IsZero() {
			noDB = time.Now()
		} else if time.Since(noDB) >= missingDBGrace {
			return 0, fmt.Errorf("the database stayed missing for %s: %w", time.Since(noDB).Round(time.Millisecond), lastErr)
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("gave up waiting for a login on port %d after %d attempts over %s (%w); last attempt: %v",
				port, attempts, time.Since(start).Round(time.Millisecond), context.Cause(ctx), lastErr)
		case <-time.After(readyPause(b.cfg.ReadyPollInterval, time.Since(start))):
		}
	}
}

// Past readyFastFor of waiting, the pause between login attempts grows by
// readyPauseGrowth of the time waited beyond it, up to readyPauseMax.
const (
	readyFastFor     = 1500 * time.Millisecond
	readyPauseGrowth = 0.05
	readyPauseMax    = 250 * time.Millisecond
)

// readyPause is the pause before the next login attempt after waited. A
// quiet machine has a new server up within readyFastFor, and the create's
// latency is what counts: the pause is base. A longer wait means a loaded
// machine (or a big image), where each attempt is a cost of its own,
// about 1 ms of CPU here and in docker-proxy (measured: 6,584 attempts on
// a published port with nothing behind it, 4.3 CPU-s in this process and
// 3.2 in docker-proxy), taken from the initdb being waited for. So the
// pause grows with the wait: a 20 s wait makes about 170 attempts instead
// of 800, and sees the server at most readyPauseMax late.
func readyPause(base, waited time.Duration) time.Duration {
	if waited <= readyFastFor {
		return base
	}
	return min(base+time.Duration(readyPauseGrowth*float64(waited-readyFastFor)), max(base, readyPauseMax))
}

// containerStopped: the container exited or restarted while a login was
// waited for.
type containerStopped struct {
	status string
	// code is the exit code, when known.
	code  int
	known bool
	// restarts is how often Docker restarted it meanwhile.
	restarts int
}

func (e *containerStopped) Error() string {
	msg := "container exited"
	if e.status == "dead" {
		msg = "container is dead"
	}
	if e.known {
		msg += fmt.Sprintf(" with code %d", e.code)
	}
	if e.restarts > 0 {
		msg += fmt.Sprintf(" (restart count %d)", e.restarts)
	}
	return msg
}

// lastExit reads the code of the container's last exit from the engine's
// events, between its creation and its latest start (both by the engine's
// clock, so a remote engine's skew does not matter).
func (b *Backend) lastExit(ctx context.Context, c container.InspectResponse) (code int, ok bool) {
	since, err := time.Parse(time.RFC3339Nano, c.Created)
	if err != nil || c.State == nil {
		return 0, false
	}
	until, err := time.Parse(time.RFC3339Nano, c.State.StartedAt)
	if err != nil {
		return 0, false
	}
	ctx, cancel := context.WithTimeout(ctx, lastExitTimeout)
	defer cancel()
	msgs, errs := b.cli.Events(ctx, events.ListOptions{
		Since: strconv.FormatInt(since.Unix(), 10),
		Until: fmt.Sprintf("%d.%09d", until.Unix(), until.Nanosecond()),
		Filters: filters.NewArgs(filters.Arg("type", string(events.ContainerEventType)),
			filters.Arg("container", c.ID), filters.Arg("event", string(events.ActionDie))),
	})
	for {
		select {
		case m := <-msgs:
			if v, err := strconv.Atoi(m.Actor.Attributes["exitCode"]); err == nil {
				code, ok = v, true
			}
		case <-errs: //nolint:errcheck // io.EOF once until is reached; any error ends the watch with what it saw
			return code, ok
		}
	}
}

// lastExitTimeout bounds the look at past events.
const lastExitTimeout = 5 * time.Second

// logSettle is the pause before a failed start's logs are read.
const logSettle = 300 * time.Millisecond

// missingDBGrace is how long a login's database may be missing before a
// create gives up on it.
const missingDBGrace = 2 * time.Second

func (b *Backend) target(port int, user, password, dbname string) pgsql.Target {
	return selfhosted.Login(b.dialHost(), port, user, password, dbname, attemptTimeout)
}

func (b *Backend) tailLogs(ctx context.Context, id string) string {
	rc, err := b.cli.ContainerLogs(ctx, id, container.LogsOptions{ShowStdout: true, ShowStderr: true, Tail: logFetch})
	if err != nil {
		return fmt.Sprintf("(could not read logs: %v)", err)
	}
	defer rc.Close()
	// Containers without a TTY multiplex stdout and stderr in one stream.
	var buf bytes.Buffer
	if _, err := stdcopy.StdCopy(&buf, &buf, rc); err != nil {
		fmt.Fprintf(&buf, "(reading logs: %v)", err)
	}
	return collapseRepeats(strings.TrimRight(buf.String(), "\n"), logTail)
}

// logPrefix is PostgreSQL's default log line prefix: time and process id.
var logPrefix = regexp.MustCompile(`^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)? \S+ \[\d+\] `)

// collapseRepeats folds runs of lines that differ only in their time and
// process id (a login refused forty times while a create waited) into one
// line and a count, so the last limit lines still show how the server got
// there.
func collapseRepeats(logs string, limit int) string {
	if logs == "" {
		return ""
	}
	var out []string
	var last string
	n := 0
	flush := func() {
		if n > 1 {
			out = append(out, fmt.Sprintf("  (the line above %d times)", n))
		}
	}
	for _, line := range strings.Split(logs, "\n") {
		key := logPrefix.ReplaceAllString(line, "")
		if n > 0 && key == last {
			n++
			continue
		}
		flush()
		out = append(out, line)
		last, n = key, 1
	}
	flush()
	if len(out) > limit {
		out = out[len(out)-limit:]
	}
	return strings.Join(out, "\n")
}

// Retries of a removal that raced with the container changing state:
// removeAttempts in all, pausing removeBackoff, then twice as long each
// time (20+40+80+160+320 ms at most, well under a second).
const (
	removeAttempts = 6
	removeBackoff  = 20 * time.Millisecond
)

// remove deletes a container with its anonymous volumes (postgraas leaked
// the data volume of every instance). Gone already is fine: a retry or
// someone else finished the job.
//
// A forced removal is not atomic in the engine: it kills the container,
// then removes it. A container that exits by itself in between (a failed
// init, the case failedStart handles) makes dockerd 20.10 answer
// 409 "Could not kill running container …, cannot remove - Container … is
// not running" (seen in CI: TestCreateContainerExitsDuringInit), and a
// removal running concurrently (a parallel destroy, Docker's own cleanup)
// gives 409 "removal of container … is already in progress". Both settle
// within moments, so those two are retried a few times; the retry after an
// "in progress" normally finds the container gone, which counts as done.
func (b *Backend) remove(ctx context.Context, id string) error {
	delay := removeBackoff
	for attempt := 1; ; attempt++ {
		err := b.cli.ContainerRemove(ctx, id, container.RemoveOptions{Force: true, RemoveVolumes: true})
		if err == nil || cerrdefs.IsNotFound(err) {
			return nil
		}
		if attempt >= removeAttempts || !removalRaced(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(delay):
		}
		delay *= 2
	}
}

// removalRaced tells the two transient removal conflicts from lasting ones
// (the engine reports all of them as conflicts, so the text decides).
func removalRaced(err error) bool {
	msg := err.Error()
	return (strings.Contains(msg, "cannot remove") && strings.Contains(msg, "is not running")) ||
		(strings.Contains(msg, "removal of container") && strings.Contains(msg, "already in progress"))
}

// cleanupContext keeps the caller's values but not its deadline, which may
// be the very thing that failed.
func cleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
}
