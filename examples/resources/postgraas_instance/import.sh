# By meta DB id (postgraas_server's postgraas_instance_id):
terraform import postgraas_instance.ci 42

# Or by instance name:
terraform import postgraas_instance.ci ci-1234

# db_password is not stored anywhere but in your configuration: after an
# import it is taken from there on the next apply.
