package main

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"
)

// row is one line of the table: a scenario at one N, with every
// repetition's measurements.
type row struct {
	name, group string
	section     string // the markdown section the row is written into
	n           int
	target      string

	floor      []time.Duration
	floorPlan  []time.Duration // refresh: the empty plan part of floor
	floorQuery []time.Duration // refresh: the query part of floor
	// overhead, when set, is the empty-configuration row whose median is
	// added to this row's floor: what Terraform costs with nothing to do.
	overhead *row

	provider []time.Duration
	conns    []connCount
	rssKB    int64
	procs    []int

	// share, when set, is the empty-configuration row whose median is
	// subtracted from this row's provider median: the provider's own share
	// (pool and clone rows; the ratio stays against the floor alone).
	share *row
	// cold is, per repetition of a pool row, how many instances did not
	// get a pool container.
	cold []int
}

// Sections of BENCHMARKS.md a row can be written into.
const (
	sectionMain = "main"
	sectionKube = "kubernetes"
	sectionWarm = "warm" // the pool and clone groups
)

func (b *bench) newRow(name, group string, n int, target string) *row {
	r := &row{name: name, group: group, n: n, target: target, section: sectionMain}
	switch group {
	case kubeGroup:
		r.section = sectionKube
	case poolGroup, refillGroup, cloneGroup:
		r.section = sectionWarm
	}
	b.rows = append(b.rows, r)
	return r
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func secs(d time.Duration) string { return fmt.Sprintf("%.3f s", d.Seconds()) }

// reference is what the provider's median is divided by.
func (r *row) reference() time.Duration {
	ref := median(r.floor)
	if r.overhead != nil {
		ref += median(r.overhead.provider)
	}
	return ref
}

func (r *row) ratio() float64 {
	ref := r.reference()
	if ref <= 0 || len(r.provider) == 0 {
		return 0
	}
	return median(r.provider).Seconds() / ref.Seconds()
}

func (r *row) floorCell() string {
	switch {
	case len(r.floor) == 0:
		return "—"
	case r.overhead != nil:
		return fmt.Sprintf("%s + %s tf = %s", secs(median(r.floor)), secs(median(r.overhead.provider)), secs(r.reference()))
	case len(r.floorPlan) > 0:
		return fmt.Sprintf("%s tf + %s query = %s", secs(median(r.floorPlan)), secs(median(r.floorQuery)), secs(median(r.floor)))
	}
	return secs(median(r.floor))
}

func (r *row) connsCell() string {
	if len(r.conns) == 0 {
		return "—"
	}
	// The repetition with the median total, shown with its split.
	s := slices.Clone(r.conns)
	slices.SortFunc(s, func(a, b connCount) int { return a.total() - b.total() })
	c := s[len(s)/2]
	per := ""
	if r.n > 0 {
		per = fmt.Sprintf("%.2f ", float64(c.total())/float64(r.n))
	}
	return fmt.Sprintf("%s(meta %d, admin %d, tenant %d)", per, c.meta, c.admin, c.tenant)
}

// verdict checks the targets that apply to a row.
func (r *row) verdict() (target string, met, applies bool) {
	ratio := r.ratio()
	switch {
	case r.group == "pg" && r.n == 20:
		return "≤ 1.5", ratio <= 1.5, true
	case r.group == "refresh" && r.n >= 200:
		return "< 3 s", median(r.provider) < 3*time.Second, true
	case r.group == poolGroup && r.target != "":
		return "≤ 0.3", ratio <= 0.3, true
	case r.group == cloneGroup && r.target != "":
		return "≤ 1.5", ratio <= 1.5, true
	case strings.HasSuffix(r.name, " create-to-ready"): // docker, kubernetes
		return "≤ 1.2", ratio <= 1.2, true
	}
	return "", false, false
}

// report is the table of rows with its notes; took is what the rows cost,
// which tookWhat names ("the run", "these rows").
func (b *bench) report(rows []*row, reps string, took time.Duration, tookWhat string) string {
	if len(rows) == 0 {
		return ""
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "Measured by one `make bench` run on %s: %d cores (%s), %s; %s, median reported; "+
		"%s took %.0f s. Load average before/after: %s / %s.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), runtime.NumCPU(), cpuModel(), memTotal(), reps,
		tookWhat, took.Seconds(), loadAtStart, loadavg())
	sb.WriteString("| scenario | N | floor | provider | ratio | target | server connections (per instance) | provider peak RSS |\n")
	sb.WriteString("|---|---|---|---|---|---|---|---|\n")
	var verdicts, spread []string
	for _, r := range rows {
		ratio := "—"
		if len(r.floor) > 0 {
			ratio = fmt.Sprintf("%.2f", r.ratio())
		}
		target := "—"
		if t, met, ok := r.verdict(); ok {
			target = t + " " + map[bool]string{true: "met", false: "**missed**"}[met]
			what := "ratio " + ratio
			if r.group == "refresh" {
				what = secs(median(r.provider))
			}
			verdicts = append(verdicts, fmt.Sprintf("%s N=%d: %s (%s)", r.name, r.n, map[bool]string{true: "met", false: "MISSED"}[met], what))
			// How far single repetitions stray from the medians, so a
			// ratio near its target can be read for what it is.
			spread = append(spread, fmt.Sprintf("%s N=%d: floor %s, provider %s", r.name, r.n, minMax(r.floor), minMax(r.provider)))
		}
		rss := "—"
		if r.rssKB > 0 {
			rss = fmt.Sprintf("%.0f MB", float64(r.rssKB)/1024)
		}
		fmt.Fprintf(&sb, "| %s | %s | %s | %s | %s | %s | %s | %s |\n",
			r.name, nCell(r.n), r.floorCell(), secs(median(r.provider)), ratio, target, r.connsCell(), rss)
	}
	sb.WriteString("\n")

	// Refresh cost per instance above the empty plan, to show it is flat.
	var per []string
	for _, r := range rows {
		if r.group == "refresh" && len(r.floorPlan) > 0 {
			d := median(r.provider) - median(r.floorPlan)
			per = append(per, fmt.Sprintf("N=%d: %.1f ms", r.n, d.Seconds()*1000/float64(r.n)))
		}
	}
	if len(per) > 0 {
		fmt.Fprintf(&sb, "Refresh cost per instance above the empty plan: %s.\n\n", strings.Join(per, ", "))
	}
	if len(spread) > 0 {
		fmt.Fprintf(&sb, "Spread over the repetitions (min–max) of the rows with a target: %s.\n\n", strings.Join(spread, "; "))
	}
	if len(verdicts) > 0 {
		sb.WriteString("Targets on time: " + strings.Join(verdicts, "; ") + ".\n")
	}
	return sb.String()
}

func minMax(ds []time.Duration) string {
	return fmt.Sprintf("%.2f–%.2f s", slices.Min(ds).Seconds(), slices.Max(ds).Seconds())
}

// sectionRows are the rows written into section.
func (b *bench) sectionRows(section string) []*row {
	var out []*row
	for _, r := range b.rows {
		if r.section == section {
			out = append(out, r)
		}
	}
	return out
}

func repsText() string {
	if *flagDockerReps == *flagReps || !wanted("docker") {
		return fmt.Sprintf("%d repetitions per row", *flagReps)
	}
	return fmt.Sprintf("%d repetitions per row, %d for the docker rows", *flagReps, *flagDockerReps)
}

func nCell(n int) string {
	if n == 0 {
		return "0"
	}
	return fmt.Sprint(n)
}

var loadAtStart = loadavg()

func loadavg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func cpuModel() string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}

func memTotal() string {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return "? RAM"
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			var kb int64
			if _, err := fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kb); err != nil {
				return "? GB RAM"
			}
			return fmt.Sprintf("%.1f GB RAM", float64(kb)/1024/1024)
		}
	}
	return "? RAM"
}

const (
	beginMarker      = "<!-- bench:begin (written by `make bench`; do not edit by hand) -->"
	endMarker        = "<!-- bench:end -->"
	scaleBeginMarker = "<!-- bench:scale:begin (written by `make bench`; do not edit by hand) -->"
	scaleEndMarker   = "<!-- bench:scale:end -->"
	kubeBeginMarker  = "<!-- bench:kubernetes:begin (written by `make bench`; do not edit by hand) -->"
	kubeEndMarker    = "<!-- bench:kubernetes:end -->"
	warmBeginMarker  = "<!-- bench:warm:begin (written by `make bench`; do not edit by hand) -->"
	warmEndMarker    = "<!-- bench:warm:end -->"
)

// replaceSection puts text between the markers of the markdown file.
func replaceSection(path, beginMarker, endMarker, text string) error {
	data, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	s := string(data)
	i := strings.Index(s, beginMarker)
	j := strings.Index(s, endMarker)
	if i < 0 || j < i {
		// No generated section yet: add one at the end.
		s = strings.TrimRight(s, "\n") + "\n\n" + beginMarker + "\n" + endMarker + "\n"
		i, j = strings.Index(s, beginMarker), strings.Index(s, endMarker)
	}
	s = s[:i+len(beginMarker)] + "\n" + text + s[j:]
	return os.WriteFile(path, []byte(s), 0o644)
}
