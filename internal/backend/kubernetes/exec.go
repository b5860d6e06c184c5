package kubernetes

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/client-go/util/exec"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/backend/selfhosted"
)

// psqlIn is psql in the instance's pod (selfhosted.Psql), through the
// API server's exec subresource. The database goes in PGDATABASE through
// env(1), as an exec cannot set the environment; the SQL on stdin.
func (b *Backend) psqlIn(inst backend.Instance) selfhosted.Psql {
	return func(ctx context.Context, script string, secrets ...string) (string, error) {
		ctx, cancel := context.WithTimeout(ctx, selfhosted.PsqlTimeout)
		defer cancel()
		cmd := append([]string{"env"}, selfhosted.PsqlEnv(inst.DBName)...)
		cmd = append(cmd, selfhosted.PsqlCommand(inst.Username)...)
		stdout, stderr, code, err := b.exec(ctx, podName(inst.Name), cmd, selfhosted.PsqlInput(script))
		if err != nil {
			return "", fmt.Errorf("running psql in pod %q: %w", podName(inst.Name), err)
		}
		if code != 0 {
			return "", selfhosted.PsqlFailed(code, stderr, secrets...)
		}
		return stdout, nil
	}
}

// exec runs cmd in the pod's postgres container with stdin, and returns
// its output and exit code.
func (b *Backend) exec(ctx context.Context, pod string, cmd []string, stdin string) (stdout, stderr string, code int, err error) {
	req := b.cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(b.namespace).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{
			Container: containerName,
			Command:   cmd,
			Stdin:     true,
			Stdout:    true,
			Stderr:    true,
		}, scheme.ParameterCodec)
	// The websocket protocol first, as kubectl does; SPDY only when the
	// server refuses the upgrade (after any other error the command may
	// have run).
	ws, err := remotecommand.NewWebSocketExecutor(b.rest, "GET", req.URL().String())
	if err != nil {
		return "", "", 0, err
	}
	spdy, err := remotecommand.NewSPDYExecutor(b.rest, "POST", req.URL())
	if err != nil {
		return "", "", 0, err
	}
	ex, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	if err != nil {
		return "", "", 0, err
	}
	var out, errOut bytes.Buffer
	err = ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errOut})
	var exit utilexec.ExitError
	if errors.As(err, &exit) && exit.Exited() {
		return out.String(), errOut.String(), exit.ExitStatus(), nil
	}
	if err != nil {
		return "", "", 0, err
	}
	return out.String(), errOut.String(), 0, nil
}
