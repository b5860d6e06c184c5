# By pool name:
terraform import postgraas_warm_pool.ci ci-postgres-16
