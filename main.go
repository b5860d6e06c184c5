package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/terraform-plugin-framework/providerserver"

	"github.com/postgraas/terraform-provider-postgraas/internal/instance"
	"github.com/postgraas/terraform-provider-postgraas/internal/provider"
)

// version is set by the release build (-ldflags "-X main.version=...").
var version = "dev"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "reap" {
		os.Exit(reap(os.Args[2:]))
	}
	var debug bool
	var address string
	flag.BoolVar(&debug, "debug", false, "run the provider with support for debuggers like delve")
	// The address only matters with -debug, where it must be the full address
	// Terraform resolves the source "postgraas/postgraas" to (hostname of the
	// registry it uses, namespace, type); the hostname is the user's to give.
	flag.StringVar(&address, "address", "local/postgraas/postgraas",
		"full provider address (hostname/postgraas/postgraas) to serve under with -debug")
	flag.Parse()
	quietUnlessLogging()
	undoOnSignal()

	err := providerserver.Serve(context.Background(), provider.New(version), providerserver.ServeOpts{
		Address: address,
		Debug:   debug,
	})
	if err != nil {
		log.Fatal(err.Error())
	}
}

// reap is the reap subcommand: remove expired instances without any
// Terraform configuration (from cron, or a CI cleanup job), configured by
// the same environment variables as the provider. It prints one line per
// instance and exits non-zero when anything failed.
func reap(args []string) int {
	fs := flag.NewFlagSet("reap", flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	limit := fs.Int("limit", provider.DefaultReapCommandLimit, "remove at most this many expired instances (the rest is left for the next run)")
	dryRun := fs.Bool("dry-run", false, "list the expired instances, remove nothing")
	timeout := fs.Duration("timeout", 10*time.Minute, "stop starting removals after this long")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: %s reap [-limit N] [-dry-run] [-timeout D]\n\n"+
			"Removes instances whose expires_at has passed, as every provider run does, with the provider's\n"+
			"environment variables (POSTGRAAS_METADB_*, POSTGRAAS_PG_CLUSTER_*, DOCKER_HOST, ...). One line per\n"+
			"instance on stdout: removed (or, with -dry-run, expired), id, name, backend, expiry, labels.\n\n", os.Args[0])
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		return 0
	} else if err != nil {
		return 2
	}
	if fs.NArg() > 0 || *limit < 0 || *timeout <= 0 {
		fs.Usage()
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := provider.Reap(ctx, *limit, *dryRun, *timeout, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "reap: %v\n", err)
		return 1
	}
	return 0
}

// shutdownWait bounds how long the provider, told to stop, waits for the
// creates in flight to remove what they made; past it, their rows' leases
// let the next run finish the job.
const shutdownWait = 60 * time.Second

// replyGrace lets the answers of the undone creates reach Terraform before
// the process exits.
const replyGrace = 500 * time.Millisecond

// undoOnSignal makes SIGTERM (what `timeout`, a cancelled CI job and
// container runtimes send) and SIGINT (Ctrl-C reaches the whole process
// group) end every create in flight, which then removes what it made and
// its meta DB row. After SIGTERM the process exits once they are done;
// after SIGINT it keeps serving, since Terraform itself stops gracefully
// and still talks to it.
func undoOnSignal() {
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, syscall.SIGTERM, os.Interrupt)
	go func() {
		for sig := range ch {
			done := instance.Shutdown(fmt.Errorf("the provider received %s", sig), shutdownWait)
			if sig == syscall.SIGTERM {
				if !done {
					log.Printf("[WARN] creates still undoing after %s; exiting, their leases expire", shutdownWait)
				}
				// The creates have returned, but their answers (which say
				// what was undone) are still on their way to Terraform.
				time.Sleep(replyGrace)
				os.Exit(128 + int(syscall.SIGTERM))
			}
		}
	}()
}

// sdkLogVars are the levels of the plugin SDK's loggers. Unset, they mean
// TRACE: every RPC then writes several JSON log lines to stderr, which
// Terraform reads, parses and, with its own log off, throws away. That was
// a quarter of the provider's CPU time in a 200-instance refresh, and more
// in Terraform's.
var sdkLogVars = []string{"TF_LOG_SDK", "TF_LOG_SDK_PROTO", "TF_LOG_SDK_FRAMEWORK", "TF_LOG_PROVIDER"}

// quietUnlessLogging turns the SDK's logs off when no TF_LOG* variable asks
// for logs (Terraform shows provider logs only with TF_LOG or
// TF_LOG_PROVIDER set, and passes its environment to the provider). Any such
// variable leaves every level as the SDK documents it.
func quietUnlessLogging() {
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "TF_LOG") && k != "TF_LOG_PATH" && v != "" {
			return
		}
	}
	for _, k := range sdkLogVars {
		_ = os.Setenv(k, "OFF")
	}
}
