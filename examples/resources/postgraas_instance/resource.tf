terraform {
  required_providers {
    postgraas = { source = "postgraas/postgraas" }
  }
}

variable "ci_db_password" {
  type      = string
  sensitive = true
}

# A database for one CI run; apply returns when it accepts logins.
resource "postgraas_instance" "ci" {
  name        = "ci-1234"
  db_name     = "app"
  db_username = "app"
  db_password = var.ci_db_password

  # Docker backend only: run another PostgreSQL version than the provider's default.
  image = "postgres:16"

  # Terminate open sessions on destroy instead of refusing.
  force_destroy = true

  # Removed by the next provider run (or `terraform-provider-postgraas reap`)
  # two hours after its creation, should this run never destroy it.
  # Or: expires_at = "2030-01-31T18:00:00Z".
  expires_after = "2h"

  # Recorded in the meta DB; postgraas_instances filters by them.
  labels = {
    pipeline = "1234"
    branch   = "main"
  }

  timeouts {
    create = "5m"
  }
}

output "connection_uri" {
  value     = postgraas_instance.ci.connection_uri
  sensitive = true
}

# Write-only password (Terraform 1.11+): neither state nor plan ever holds it.
# An ephemeral variable (Terraform 1.10+) keeps it out of the plan file too.
variable "app_db_password" {
  type      = string
  sensitive = true
  ephemeral = true
}

resource "postgraas_instance" "app" {
  backend     = "pg_cluster" # this instance's backend, whatever the provider's default
  name        = "app-staging"
  db_name     = "app"
  db_username = "app"

  db_password_wo = var.app_db_password
  # Terraform cannot see a write-only value change: bump this to rotate.
  db_password_wo_version = 1
}
