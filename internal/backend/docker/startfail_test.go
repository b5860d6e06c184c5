package docker

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/backend/selfhosted"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
	"github.com/postgraas/terraform-provider-postgraas/internal/reach"
)

// A new container that will never take its login fails the create at
// once, says why, and leaves nothing behind (issue 9).

// buildImage builds an image FROM the test image with the Dockerfile
// lines given, from an in-memory context, and removes it when the test
// ends.
func (e env) buildImage(t *testing.T, ctx context.Context, lines ...string) string {
	t.Helper()
	dockerfile := "FROM " + e.image + "\n" + strings.Join(lines, "\n") + "\n"
	var tarball bytes.Buffer
	tw := tar.NewWriter(&tarball)
	if err := tw.WriteHeader(&tar.Header{Name: "Dockerfile", Mode: 0o644, Size: int64(len(dockerfile))}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write([]byte(dockerfile)); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	ref := "pgtest-img-" + randHex(4) + ":latest"
	resp, err := e.b.cli.ImageBuild(ctx, &tarball, build.ImageBuildOptions{Tags: []string{ref}, Remove: true, ForceRemove: true})
	if err != nil {
		t.Fatalf("building %s: %v", ref, err)
	}
	err = streamError(resp.Body)
	_ = resp.Body.Close()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := e.b.cli.ImageRemove(ctx, ref, image.RemoveOptions{Force: true, PruneChildren: true}); err != nil {
			t.Errorf("removing image %s: %v", ref, err)
		}
	})
	if err != nil {
		t.Fatalf("building %s:\n%s\n%v", ref, dockerfile, err)
	}
	return ref
}

// A new instance whose server can never take its login fails with a
// StartError that says why and shows the server's last log lines, long
// before the create's deadline, and leaves no container or volume. The
// test image's entrypoint is /usr/local/bin/docker-entrypoint.sh, its
// command postgres (docker image inspect).
func TestCreateFailsFastWhenItCannotStart(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	for _, c := range []struct {
		name string
		// lines of the Dockerfile after FROM.
		lines []string
		// reason and logs must be in the StartError's.
		reason, logs string
		// min is what failing must take at least (the grace).
		min time.Duration
	}{{
		name: "database never appears",
		// Setting ENTRYPOINT drops the inherited CMD: given again.
		lines: []string{`ENTRYPOINT ["/bin/sh", "-c", "unset POSTGRES_DB; exec /usr/local/bin/docker-entrypoint.sh \"$@\"", "sh"]`,
			`CMD ["postgres"]`},
		reason: `database "app db" does not exist in the new container`,
		logs:   `database "app db" does not exist`,
		min:    missingDBGrace,
	}, {
		name:   "exits at once",
		lines:  []string{`ENTRYPOINT ["/bin/sh", "-c", "echo boom-marker >&2; exit 3"]`},
		reason: "container exited with code 3",
		logs:   "boom-marker",
	}, {
		name: "bootstrap password refused",
		lines: []string{`ENTRYPOINT ["/bin/sh", "-c", "export POSTGRES_PASSWORD=not-the-bootstrap; exec /usr/local/bin/docker-entrypoint.sh \"$@\"", "sh"]`,
			`CMD ["postgres"]`},
		reason: `refused the login of "app_user" with the bootstrap password`,
		// The refusal's own log line may still be on its way through
		// Docker's log driver (seen on a loaded CI machine); the server's
		// readiness before it is not.
		logs: `database system is ready to accept connections`,
	}} {
		t.Run(c.name, func(t *testing.T) {
			const deadline = 3 * time.Minute
			ctx := ctxFor(t, deadline+time.Minute)
			spec := e.spec(t)
			spec.Image = e.buildImage(t, ctx, c.lines...)
			m := e.watch(t)
			start := time.Now()
			_, err := e.b.Create(ctxFor(t, deadline), spec)
			took := time.Since(start)
			var se *backend.StartError
			if !errors.As(err, &se) {
				t.Fatalf("want a StartError, got %v", err)
			}
			t.Logf("failed after %v: %v", took.Round(time.Millisecond), se.Reason)
			if !strings.Contains(se.Reason, c.reason) || !strings.Contains(se.Logs, c.logs) {
				t.Errorf("want %q in the reason and %q in the logs, got %v", c.reason, c.logs, se)
			}
			if reach.As(err) != nil {
				t.Errorf("a StartError must not read as a connection failure: %v", err)
			}
			if strings.Contains(err.Error(), spec.Password) {
				t.Error("error contains the password")
			}
			// Before, a database that never appeared held the create
			// until its deadline. A loaded machine takes tens of seconds
			// to initialise a server, hence the generous bound.
			if took > deadline/2 || took < c.min {
				t.Errorf("failing took %v; want between %v and %v", took, c.min, deadline/2)
			}
			e.assertNothingLeft(t, spec.Name, m)
			if len(m.containers) != 1 || len(m.volumes) == 0 {
				t.Errorf("saw %d containers and %d volumes: the leak check proved nothing", len(m.containers), len(m.volumes))
			}
		})
	}
}

// Once Docker has restarted a container, inspect shows it running with
// exit code 0; the code of the exit that made it restart comes from the
// engine's events.
func TestLastExitAfterARestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := ctxFor(t, 2*time.Minute)
	name := "pgtest-restart-" + randHex(4)
	c, err := e.b.cli.ContainerCreate(ctx, &container.Config{
		Image: e.image,
		// Exits 3 on its first run, sleeps on the next.
		Entrypoint: []string{"/bin/sh", "-c", "[ -e /tmp/ran ] && exec sleep 120; touch /tmp/ran; exit 3"},
	}, &container.HostConfig{RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyUnlessStopped}}, nil, nil, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.b.remove(context.Background(), c.ID); err != nil {
			t.Errorf("removing %s: %v", name, err)
		}
	})
	if err := e.b.cli.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	var ci container.InspectResponse
	for {
		ci, _ = e.inspect(t, c.ID)
		if ci.RestartCount > 0 && ci.State.Running && !ci.State.Restarting {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("never saw it running again: %+v", ci.State)
		case <-time.After(50 * time.Millisecond):
		}
	}
	if ci.State.ExitCode != 0 {
		t.Logf("inspect shows exit code %d: the events are not needed on this engine", ci.State.ExitCode)
	}
	start := time.Now()
	code, ok := e.b.lastExit(ctx, ci)
	t.Logf("lastExit took %v", time.Since(start))
	if !ok || code != 3 {
		t.Errorf("lastExit = %d, %v; want 3, true", code, ok)
	}
	msg := (&containerStopped{status: ci.State.Status, code: 3, known: true, restarts: ci.RestartCount}).Error()
	if want := "container exited with code 3 (restart count 1)"; msg != want {
		t.Errorf("message %q, want %q", msg, want)
	}
}

// An attempt whose ALTER ROLE committed after it gave up waiting for the
// answer leaves the bootstrap secret refused; the next attempt must see
// that the verifier is already the instance's, not fail the create (seen
// on a loaded CI machine as "Instance did not start").
func TestPersonaliseAfterALostAnswer(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := ctxFor(t, 3*time.Minute)
	spec := e.spec(t)
	bootstrap := selfhosted.RandomSecret()
	verifier, err := pgsql.ScramVerifier(spec.Password)
	if err != nil {
		t.Fatal(err)
	}
	id, err := e.b.createContainer(ctx, spec, e.image, bootstrap)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.b.cli.ContainerStart(ctx, id, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	// The lost attempt: it set the verifier, its caller never heard. On a
	// loaded machine one of its own tries can lose its answer for real
	// (the ALTER went out, the attempt timed out): its retry is then
	// refused, and the verifier is set all the same, which is this step's
	// whole point; only its ssl answer is unknown then.
	var lost selfhosted.Personalisation
	reallyLost := false
	if _, err := e.b.untilLogin(ctx, id, 0, func(port int) error {
		sent := lost.Sent
		err := selfhosted.Personalise(ctx, e.b.target(port, spec.Username, bootstrap, spec.DBName), verifier, attemptTimeout, &lost)
		if sent && pgsql.IsAuthFailure(err) {
			reallyLost = true
			return nil
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// Without knowing an ALTER went out, the refusal is final.
	var none selfhosted.Personalisation
	if _, err := e.b.untilLogin(ctx, id, 0, e.b.personaliseAttempt(ctx, id, spec, bootstrap, verifier, &none)); !pgsql.IsAuthFailure(err) {
		t.Fatalf("no ALTER sent, bootstrap refused: want the refusal, got %v", err)
	}
	// Knowing one did, the server's stored verifier settles it.
	sent := selfhosted.Personalisation{Sent: true}
	if _, err := e.b.untilLogin(ctx, id, 0, e.b.personaliseAttempt(ctx, id, spec, bootstrap, verifier, &sent)); err != nil {
		t.Fatalf("after a lost answer: %v", err)
	}
	// The lost answer carried the server's ssl setting: asked again.
	if reallyLost {
		t.Log("the first attempt lost an answer of its own: its ssl setting is unknown")
		lost.SSL = "off"
	}
	if lost.SSL != "off" || sent.SSL != lost.SSL {
		t.Fatalf("ssl setting: %q from the lost attempt, %q after it (the test image offers no TLS)", lost.SSL, sent.SSL)
	}
}
