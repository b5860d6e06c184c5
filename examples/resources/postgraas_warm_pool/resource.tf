terraform {
  required_providers {
    postgraas = { source = "postgraas/postgraas" }
  }
}

# Two initialised PostgreSQL containers kept ready on the docker backend.
resource "postgraas_warm_pool" "ci" {
  name  = "ci-postgres-16"
  image = "postgres:16"
  size  = 2
}

# An instance of the same image claims a warm container instead of waiting
# for initdb (an empty pool falls back to a normal create). depends_on makes
# the first apply fill the pool before the instance is created; pipelines
# that only create instances need no reference to the pool at all.
resource "postgraas_instance" "test_db" {
  name        = "ci-${var.run_id}"
  db_name     = "app"
  db_username = "app"
  db_password = var.db_password
  image       = postgraas_warm_pool.ci.image

  depends_on = [postgraas_warm_pool.ci]
}

variable "run_id" {
  type = string
}

variable "db_password" {
  type      = string
  sensitive = true
}
