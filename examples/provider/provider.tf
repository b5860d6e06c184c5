# Docker backend (the default): every instance is a whole PostgreSQL server in
# its own container. Secrets usually come from the environment
# (POSTGRAAS_METADB_PASSWORD, ...), so CI needs none in HCL.
terraform {
  required_providers {
    postgraas = { source = "postgraas/postgraas" }
  }
}

provider "postgraas" {
  metadb = {
    host     = "127.0.0.1"
    port     = 5432
    db_name  = "postgraas"
    username = "postgraas"
    password = var.metadb_password
  }
  docker = {
    host            = "unix:///var/run/docker.sock"
    image           = "postgres:17"
    bind_address    = "0.0.0.0"
    advertised_host = "db.example.internal"
  }
}

# pg_cluster backend: a role and a database per instance on a shared cluster.
provider "postgraas" {
  alias   = "cluster"
  backend = "pg_cluster"
  metadb = {
    host     = "127.0.0.1"
    password = var.metadb_password
  }
  # Every run removes at most this many expired instances as it starts
  # (default 5; 0: never, leaving it to `terraform-provider-postgraas reap`).
  reap_limit = 10
  pg_cluster = {
    host     = "pg.example.internal"
    port     = 5432
    database = "postgres"
    username = "postgres"
    password = var.cluster_admin_password
    sslmode  = "require"
  }
}

variable "metadb_password" {
  type      = string
  sensitive = true
}

variable "cluster_admin_password" {
  type      = string
  sensitive = true
}

# kubernetes backend: a StatefulSet, a Service and a one-time bootstrap Secret
# per instance, in the namespace of the kubeconfig context.
provider "postgraas" {
  alias   = "k8s"
  backend = "kubernetes"
  metadb = {
    host     = "metadb.example.internal"
    password = var.metadb_password
  }
  kubernetes = {
    kubeconfig      = pathexpand("~/.kube/config")
    context         = "ci"
    namespace       = "test-databases"
    storage_class   = "fast-ssd"
    storage_size    = "2Gi"
    service_type    = "NodePort"
    advertised_host = "nodes.example.internal"
    requests_memory = "512Mi"
    limits_memory   = "2Gi"
  }
}
