# Template clones (pg_cluster only): one golden instance with the migrations
# applied, one copy of it per test job. (The required_providers block is in
# resource.tf of this folder: a module may have only one.)
variable "golden_db_password" {
  type      = string
  sensitive = true
}

variable "job_db_password" {
  type      = string
  sensitive = true
  ephemeral = true
}

variable "job_id" {
  type    = string
  default = "1234"
}

resource "postgraas_instance" "golden" {
  backend     = "pg_cluster"
  name        = "golden"
  db_name     = "golden"
  db_username = "golden"
  db_password = var.golden_db_password
}

# Starts as a copy of the golden database (CREATE DATABASE ... TEMPLATE):
# everything the golden role owned there belongs to job_<id> in the copy, and
# neither role can connect to the other's database.
resource "postgraas_instance" "job" {
  backend     = "pg_cluster"
  name        = "job-${var.job_id}"
  db_name     = "job_${var.job_id}"
  db_username = "job_${var.job_id}"

  db_password_wo         = var.job_db_password
  db_password_wo_version = 1

  template_instance = postgraas_instance.golden.id
  # PostgreSQL copies a database only while nobody else is connected to it:
  # wait up to two minutes for the golden's sessions (a migration run) to end.
  template_wait = "2m"
}
