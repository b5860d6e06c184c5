package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// cmdTimeout bounds one terraform command; the whole run stays well under
// a quarter of an hour on two cores.
const cmdTimeout = 5 * time.Minute

// tfResult is what one terraform command cost.
type tfResult struct {
	took  time.Duration
	rssKB int64 // highest VmHWM of any provider process it started
	conns connCount
	procs int // provider processes seen
}

// terraform runs one command in dir. plan uses -detailed-exitcode and
// fails when the plan is not empty: a refresh must find nothing to change.
func (b *bench) terraform(ctx context.Context, dir, cmd string, _ *row, extra ...string) (tfResult, error) {
	var args []string
	switch cmd {
	case "apply", "destroy":
		args = []string{cmd, "-auto-approve", "-input=false", "-no-color"}
	case "plan":
		args = []string{"plan", "-input=false", "-no-color", "-detailed-exitcode", "-lock=false"}
	default:
		return tfResult{}, fmt.Errorf("unknown terraform command %q", cmd)
	}
	args = append(args, extra...)
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	c := exec.CommandContext(ctx, "terraform", args...)
	c.Dir = dir
	c.Env = b.tfEnv
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out

	if cmd == "apply" {
		b.setLive(b.liveDirs, dir, true)
	}
	logOff := fileSize(b.pgLog)
	start := time.Now()
	if err := c.Start(); err != nil {
		return tfResult{}, err
	}
	sampler := startRSS(c.Process.Pid)
	err := c.Wait()
	took := time.Since(start)
	rss, procs := sampler.stop()

	logPath := filepath.Join(dir, fmt.Sprintf("terraform-%s-%d.log", cmd, time.Now().UnixNano()))
	_ = os.WriteFile(logPath, out.Bytes(), 0o600)
	if err != nil {
		return tfResult{}, fmt.Errorf("terraform %s in %s: %v\n%s", cmd, dir, err, tail(out.String(), 40))
	}
	if cmd == "destroy" {
		b.setLive(b.liveDirs, dir, false)
	}
	conns, cerr := b.countConns(logOff)
	if cerr != nil {
		return tfResult{}, cerr
	}
	return tfResult{took: took, rssKB: rss, conns: conns, procs: procs}, nil
}

// measureTF runs one terraform command as a measured repetition of r.
func (b *bench) measureTF(ctx context.Context, r *row, dir string, n int, cmd string, extra ...string) error {
	res, err := b.terraform(ctx, dir, cmd, r, extra...)
	if err != nil {
		return err
	}
	r.provider = append(r.provider, res.took)
	r.conns = append(r.conns, res.conns)
	r.rssKB = max(r.rssKB, res.rssKB)
	r.procs = append(r.procs, res.procs)
	logf("%-28s N=%-3d %-7s %7.3f s  conns %s  rss %d MB  provider processes %d",
		r.name, n, cmd, res.took.Seconds(), res.conns, res.rssKB/1024, res.procs)
	return nil
}

func (b *bench) setLive(m map[string]bool, k string, v bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if v {
		m[k] = true
	} else {
		delete(m, k)
	}
}

func tail(s string, lines int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

func fileSize(p string) int64 {
	st, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return st.Size()
}

// connCount is the server connections the provider opened during one
// command, from the server log ("connection authorized", log_connections),
// by login: the meta DB user, the cluster admin, and tenants of this run.
// The bench's own connections carry another application_name.
type connCount struct {
	meta, admin, tenant int
}

func (c connCount) total() int { return c.meta + c.admin + c.tenant }

func (c connCount) String() string {
	return fmt.Sprintf("%d (meta %d, admin %d, tenant %d)", c.total(), c.meta, c.admin, c.tenant)
}

func (b *bench) countConns(from int64) (connCount, error) {
	// The server writes the line before it answers the login, so every
	// connection of a finished command is in the file already.
	f, err := os.Open(b.pgLog)
	if err != nil {
		return connCount{}, fmt.Errorf("reading the server log: %w", err)
	}
	defer f.Close()
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return connCount{}, err
	}
	var c connCount
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	tenantPrefix := "pgb-" + b.runID + "-"
	for sc.Scan() {
		line := sc.Text()
		i := strings.Index(line, "connection authorized: user=")
		if i < 0 || !strings.Contains(line, "application_name=terraform-provider-postgraas") {
			continue
		}
		user, _, _ := strings.Cut(line[i+len("connection authorized: user="):], " ")
		switch {
		case user == b.metaDB.User:
			c.meta++
		case user == b.cluster.User:
			c.admin++
		case strings.HasPrefix(user, tenantPrefix):
			c.tenant++
		}
	}
	return c, sc.Err()
}

// rssSampler polls the provider processes terraform starts (its children)
// every 20 ms and keeps the highest VmHWM (peak resident set) seen.
type rssSampler struct {
	parent int
	quit   chan struct{}
	done   chan struct{}
	maxKB  int64
	seen   map[int]bool
}

func startRSS(parent int) *rssSampler {
	s := &rssSampler{parent: parent, quit: make(chan struct{}), done: make(chan struct{}), seen: map[int]bool{}}
	go func() {
		defer close(s.done)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			s.sample()
			select {
			case <-s.quit:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *rssSampler) stop() (int64, int) {
	close(s.quit)
	<-s.done
	return s.maxKB, len(s.seen)
}

func (s *rssSampler) sample() {
	for _, pid := range children(s.parent) {
		name, hwm := procStatus(pid)
		if !strings.HasPrefix(name, "terraform-provi") { // comm is cut at 15 bytes
			continue
		}
		s.seen[pid] = true
		s.maxKB = max(s.maxKB, hwm)
	}
}

// children lists the child processes of pid from /proc/<pid>/task/*/children.
func children(pid int) []int {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return nil
	}
	var out []int
	for _, t := range tasks {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, t.Name()))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(data)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

func procStatus(pid int) (name string, hwmKB int64) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "", 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "Name":
			name = v
		case "VmHWM":
			n, _ := strconv.ParseInt(strings.TrimSuffix(v, " kB"), 10, 64)
			hwmKB = n
		}
	}
	return name, hwmKB
}

// cleanup removes whatever an interrupted run left: terraform states with
// resources, floor roles/databases, containers, kubernetes objects and
// the warm pools' image tags.
func (b *bench) cleanup(ctx context.Context) {
	b.mu.Lock()
	dirs := keys(b.liveDirs)
	sqls := keys(b.liveSQL)
	ctrs := keys(b.liveCtrs)
	kube := keys(b.liveKube)
	tags := keys(b.liveTags)
	b.mu.Unlock()
	for _, d := range dirs {
		logf("cleanup: terraform destroy in %s", d)
		if _, err := b.terraform(ctx, d, "destroy", nil); err != nil {
			logf("cleanup: %v", err)
		}
	}
	if len(sqls) > 0 {
		logf("cleanup: dropping %d floor instance(s)", len(sqls))
		if _, err := b.floorPGDestroy(ctx, sqls); err != nil {
			logf("cleanup: %v", err)
		}
	}
	if len(ctrs) > 0 {
		logf("cleanup: removing %d floor container(s)", len(ctrs))
		if _, err := b.floorDockerDestroy(ctx, ctrs); err != nil {
			logf("cleanup: %v", err)
		}
	}
	if len(kube) > 0 {
		logf("cleanup: deleting %d floor kubernetes instance(s)", len(kube))
		if _, err := b.floorKubeDestroy(ctx, kube); err != nil {
			logf("cleanup: %v", err)
		}
	}
	// Last: the pools' instances and the pools are gone by now.
	for _, t := range tags {
		logf("cleanup: removing image tag %s", t)
		if err := b.untag(ctx, t); err != nil {
			logf("cleanup: %v", err)
		}
	}
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
