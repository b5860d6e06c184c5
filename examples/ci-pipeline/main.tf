# One database per CI run: `ci-<run id>`, created before the tests and
# destroyed after them, whatever the tests did. ci-job.sh (any CI system) and
# github-actions.yml run it. The provider's settings come from the
# environment (POSTGRAAS_BACKEND, POSTGRAAS_METADB_*, POSTGRAAS_PG_CLUSTER_* or
# DOCKER_HOST), so this file holds no secret.
terraform {
  required_providers {
    postgraas = { source = "postgraas/postgraas" }
  }
}

variable "run_id" {
  type        = string
  description = "The CI system's id of this run (e.g. GitHub's run id and attempt): names the instance."

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9_.-]{0,59}$", var.run_id))
    error_message = "run_id: 1 to 60 letters, digits, '_', '.' and '-', starting with a letter or digit."
  }
}

variable "expires_after" {
  type        = string
  default     = "2h"
  description = "How long the run's database may outlive a run that died before its destroy step (a killed runner): any later run using the same meta DB, or the provider binary's `reap` command, removes it then."
}

variable "db_password" {
  type        = string
  sensitive   = true
  description = "The run's database password, made up by the job (TF_VAR_db_password)."
}

locals {
  # On a shared cluster the database and the role are cluster-wide names too:
  # one per run, so that concurrent runs never meet.
  run_ident = "ci_${replace(lower(var.run_id), "/[^a-z0-9_]/", "_")}"
}

resource "postgraas_instance" "ci" {
  name        = "ci-${var.run_id}"
  db_name     = local.run_ident
  db_username = local.run_ident
  db_password = var.db_password
  # A run that was cancelled between its tests and its destroy step left
  # sessions open: end them rather than fail the clean-up.
  force_destroy = true

  # A run killed before its destroy step (a runner lost, a job timed out)
  # leaks nothing: the database expires, and the next run of any pipeline
  # using this meta DB removes it. Set it longer than the longest job.
  expires_after = var.expires_after
  # Find a run's databases with data "postgraas_instances" { labels = { ci_run = "..." } }.
  labels = {
    ci_run  = var.run_id
    purpose = "ci"
  }
}

output "connection_uri" {
  description = "postgres://user:...@host:port/db?sslmode=..., for DATABASE_URL."
  value       = postgraas_instance.ci.connection_uri
  sensitive   = true
}

output "expires_at" {
  description = "When the database expires if this run never destroys it."
  value       = postgraas_instance.ci.expires_at
}

output "host" {
  value = postgraas_instance.ci.host
}

output "port" {
  value = postgraas_instance.ci.port
}

output "db_name" {
  value = postgraas_instance.ci.db_name
}

output "username" {
  value = postgraas_instance.ci.db_username
}

output "sslmode" {
  value = postgraas_instance.ci.sslmode
}
