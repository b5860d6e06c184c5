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

  timeouts {
    create = "5m"
  }
}

output "connection_uri" {
  value     = postgraas_instance.ci.connection_uri
  sensitive = true
}
