# Look up an instance created by another pipeline (or by postgraas_server).
terraform {
  required_providers {
    postgraas = { source = "postgraas/postgraas" }
  }
}

data "postgraas_instance" "shared" {
  name = "my_postgraas"
}

# Or by meta DB id.
data "postgraas_instance" "by_id" {
  id = "1"
}

output "shared_host" {
  value = "${data.postgraas_instance.shared.host}:${data.postgraas_instance.shared.port}"
}

output "shared_labels_and_expiry" {
  value = {
    labels     = data.postgraas_instance.shared.labels
    expires_at = data.postgraas_instance.shared.expires_at # null: never expires
  }
}
