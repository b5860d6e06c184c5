package provider

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/knownvalue"
	"github.com/hashicorp/terraform-plugin-testing/statecheck"
	"github.com/hashicorp/terraform-plugin-testing/terraform"
	"github.com/hashicorp/terraform-plugin-testing/tfjsonpath"
	"github.com/jackc/pgx/v5"

	"github.com/postgraas/terraform-provider-postgraas/internal/pgserver"
)

// TestAccInstance_sslmodeTLS: on a cluster that offers TLS the instance says
// sslmode "require", its connection_uri carries it, and a login with that
// URI is encrypted; the data source shows the same. (The shared test
// servers offer no TLS: the other tests see "disable".)
func TestAccInstance_sslmodeTLS(t *testing.T) {
	testAccPreCheck(t)
	cert, key := selfSignedForPostgres(t)
	srv := startPrivateServer(t, "TLS", pgserver.Options{Conf: fmt.Sprintf(
		"ssl = on\nssl_cert_file = '%s'\nssl_key_file = '%s'", cert, key)})
	a := srv.Target
	providerHCL := fmt.Sprintf(`metadb = {
    host = %q, port = %d, db_name = "postgres", username = %s, password = %s, sslmode = "require"
  }
  pg_cluster = {
    host = %q, port = %d, database = "postgres", username = %s, password = %s, sslmode = "require"
  }`, a.Host, a.Port, hclString(a.User), hclString(a.Password), a.Host, a.Port, hclString(a.User), hclString(a.Password))
	i := newClusterInstance("tls")
	lookup := `
data "postgraas_instance" "tls" {
  name = postgraas_instance.tls.name
}`
	resource.ParallelTest(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProviders,
		Steps: []resource.TestStep{{
			Config: clusterConfig(providerHCL, i) + lookup,
			ConfigStateChecks: []statecheck.StateCheck{
				statecheck.ExpectKnownValue(i.address(), tfjsonpath.New("sslmode"), knownvalue.StringExact("require")),
				statecheck.ExpectKnownValue("data.postgraas_instance.tls", tfjsonpath.New("sslmode"), knownvalue.StringExact("require")),
				statecheck.ExpectKnownValue("data.postgraas_instance.tls", tfjsonpath.New("status"), knownvalue.StringExact("ready")),
			},
			Check: func(s *terraform.State) error {
				uri := s.RootModule().Resources[i.address()].Primary.Attributes["connection_uri"]
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				cfg, err := pgx.ParseConfig(uri)
				if err != nil {
					return fmt.Errorf("parsing connection_uri: %w", err)
				}
				if cfg.TLSConfig == nil || len(cfg.Fallbacks) != 0 {
					return fmt.Errorf("connection_uri does not require TLS (fallbacks: %d)", len(cfg.Fallbacks))
				}
				c, err := pgx.ConnectConfig(ctx, cfg)
				if err != nil {
					return fmt.Errorf("logging in with connection_uri: %w", err)
				}
				defer c.Close(ctx)
				var encrypted bool
				if err := c.QueryRow(ctx, `SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()`).Scan(&encrypted); err != nil {
					return err
				}
				if !encrypted {
					return fmt.Errorf("the login with connection_uri is not encrypted")
				}
				return nil
			},
		}},
	})
}

// selfSignedForPostgres writes a throw-away certificate and key where the
// postgres OS user that runs private servers can read them (the server
// refuses a key that others can read).
func selfSignedForPostgres(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "postgraas-tls-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	pg, err := user.Lookup("postgres")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(pg.Uid)
	gid, _ := strconv.Atoi(pg.Gid)
	certFile, keyFile = filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	for f, block := range map[string]*pem.Block{
		certFile: {Type: "CERTIFICATE", Bytes: der},
		keyFile:  {Type: "EC PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(f, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(f, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile
}
