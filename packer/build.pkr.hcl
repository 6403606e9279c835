# One build, four images: each source is reused once per appliance image (the azimuth-images
# pattern), on OpenStack and locally. Pick with -only, e.g. -only='appliance.qemu.kafka' or
# -only='appliance.openstack.*' (make image-kafka / make images CLOUD=chameleon do that).

build {
  name = "appliance"

  source "source.openstack.base" {
    name       = "producer"
    image_name = "appliance-producer-${local.image_suffix}"
  }
  source "source.openstack.base" {
    name       = "ml-server"
    image_name = "appliance-ml-server-${local.image_suffix}"
  }
  source "source.openstack.base" {
    name       = "kafka"
    image_name = "appliance-kafka-${local.image_suffix}"
  }
  source "source.openstack.base" {
    name       = "mongodb"
    image_name = "appliance-mongodb-${local.image_suffix}"
  }

  source "source.qemu.base" {
    name             = "producer"
    vm_name          = "appliance-producer-${local.image_suffix}.qcow2"
    output_directory = "${var.output_dir}/producer/${local.bake_dir}"
  }
  source "source.qemu.base" {
    name             = "ml-server"
    vm_name          = "appliance-ml-server-${local.image_suffix}.qcow2"
    output_directory = "${var.output_dir}/ml-server/${local.bake_dir}"
  }
  source "source.qemu.base" {
    name             = "kafka"
    vm_name          = "appliance-kafka-${local.image_suffix}.qcow2"
    output_directory = "${var.output_dir}/kafka/${local.bake_dir}"
  }
  source "source.qemu.base" {
    name             = "mongodb"
    vm_name          = "appliance-mongodb-${local.image_suffix}.qcow2"
    output_directory = "${var.output_dir}/mongodb/${local.bake_dir}"
  }

  provisioner "ansible" {
    playbook_file = "${local.repo_root}/images/${source.name}/playbook.yml"
    # Ansible talks to the VM's own sshd, not through Packer's SSH proxy (which speaks no SFTP
    # and breaks on OpenSSH 9's scp).
    use_proxy = false
    ansible_env_vars = [
      "ANSIBLE_CONFIG=${local.repo_root}/ansible.cfg",
      "ANSIBLE_ROLES_PATH=${local.repo_root}/roles",
      "ANSIBLE_HOST_KEY_CHECKING=False",
      # OpenSSH 9 made scp use SFTP; -O keeps the classic protocol Ansible's fallback expects.
      "ANSIBLE_SCP_EXTRA_ARGS=-O",
      "ANSIBLE_FORCE_COLOR=1",
    ]
    extra_arguments = [
      "--scp-extra-args", "'-O'",
      "--extra-vars", "appliance_version=${var.appliance_version}",
      "--extra-vars", "appliance_image_source=${var.image_source}",
      "--extra-vars", "appliance_image_prefix=${var.container_image_prefix}",
      "--extra-vars", "appliance_containers_dir=${local.containers_dir}",
      "--extra-vars", "ansible_python_interpreter=/usr/bin/python3",
    ]
  }

  post-processor "manifest" {
    output     = "${var.output_dir}/manifest.json"
    strip_path = false
    custom_data = {
      appliance_version = var.appliance_version
      git_commit        = var.git_commit
      image             = source.name
    }
  }
}
