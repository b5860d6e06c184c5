package main

import (
	"context"
	"flag"
	"log"

	"github.com/hashicorp/terraform-plugin-framework/providerserver"

	"github.com/postgraas/terraform-provider-postgraas/internal/provider"
)

// version is set by the release build (-ldflags "-X main.version=...").
var version = "dev"

func main() {
	var debug bool
	var address string
	flag.BoolVar(&debug, "debug", false, "run the provider with support for debuggers like delve")
	// The address only matters with -debug, where it must be the full address
	// Terraform resolves the source "postgraas/postgraas" to (hostname of the
	// registry it uses, namespace, type); the hostname is the user's to give.
	flag.StringVar(&address, "address", "local/postgraas/postgraas",
		"full provider address (hostname/postgraas/postgraas) to serve under with -debug")
	flag.Parse()

	err := providerserver.Serve(context.Background(), provider.New(version), providerserver.ServeOpts{
		Address: address,
		Debug:   debug,
	})
	if err != nil {
		log.Fatal(err.Error())
	}
}
