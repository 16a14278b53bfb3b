# An Amazon Linux 2023 AMI with ec2fleetd installed from its RPM, for x86_64
# or Graviton (arm64): one build per `arch`.
#
#   packer init packaging/packer
#   packer build -var region=eu-west-1 -var arch=arm64 packaging/packer
#
# See packaging/README.md for the packages and doc/ami.md for the way to
# production.

packer {
  required_version = ">= 1.7.0"
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.3.0"
    }
  }
}

variable "region" {
  type        = string
  description = "AWS region to build the AMI in."
  default     = env("AWS_REGION")
}

variable "arch" {
  type        = string
  description = "x86_64 or arm64 (Graviton): picks the base AMI, the build instance and the RPM."
  default     = "x86_64"

  validation {
    condition     = contains(["x86_64", "arm64"], var.arch)
    error_message = "The arch variable must be x86_64 or arm64."
  }
}

variable "ec2fleetd_version" {
  type        = string
  description = "Version of the RPM to install; must match Cargo.toml, which scripts/package names the RPM after."
  default     = "0.1.0"
}

variable "package_dir" {
  type        = string
  description = "Directory holding the RPMs built by scripts/package. A relative path is taken from this template's directory, so the default works wherever packer is started."
  default     = "../../target/package"
}

variable "app_name" {
  type        = string
  description = "Enable ec2fleetd@APP_NAME (config /etc/ec2fleetd/APP_NAME.jsonc). Empty: enable ec2fleetd.service, which reads the config from the user data."
  default     = ""
}

variable "config_file" {
  type        = string
  description = "Config to ship in the image as /etc/ec2fleetd/APP_NAME.jsonc (needs app_name). Relative to where packer is started. Empty: none."
  default     = ""
}

variable "instance_type" {
  type        = string
  description = "Build instance type. Empty: t3.micro for x86_64, t4g.micro for arm64."
  default     = ""
}

variable "subnet_id" {
  type        = string
  description = "Subnet for the build instance. Empty: the default VPC."
  default     = ""
}

locals {
  # The RPM's own name for the architecture (aarch64), not EC2's (arm64).
  rpm_arch = { x86_64 = "x86_64", arm64 = "aarch64" }[var.arch]

  instance_type = var.instance_type != "" ? var.instance_type : { x86_64 = "t3.micro", arm64 = "t4g.micro" }[var.arch]

  # Relative to this template, so that the default works from any directory.
  package_dir = substr(var.package_dir, 0, 1) == "/" ? var.package_dir : "${path.root}/${var.package_dir}"

  # The name scripts/package gives it: ec2fleetd-<VERSION>-1.<RPMARCH>.rpm.
  # Named exactly rather than globbed, so that a stale RPM of another version
  # in the same directory cannot end up in the image.
  rpm_file = "ec2fleetd-${var.ec2fleetd_version}-1.${local.rpm_arch}.rpm"

  # Where the config lands on the build instance; empty when none is given.
  config_upload = var.config_file != "" ? "/tmp/${basename(var.config_file)}" : ""

  # AMI names must be unique: the build time keeps rebuilds apart.
  timestamp = regex_replace(timestamp(), "[- TZ:]", "")
}

source "amazon-ebs" "al2023" {
  region        = var.region
  instance_type = local.instance_type
  subnet_id     = var.subnet_id
  ssh_username  = "ec2-user"

  # The newest standard (not minimal) AL2023 image of this architecture, from
  # Amazon's own account: names look like
  # al2023-ami-2023.11.20260526.0-kernel-6.18-arm64.
  source_ami_filter {
    filters = {
      name                = "al2023-ami-2023.*-kernel-*-${var.arch}"
      architecture        = var.arch
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    owners      = ["amazon"]
    most_recent = true
  }

  # ec2fleetd speaks IMDSv2 only. The build instance needs no IMDSv1 either,
  # and instances launched from the AMI default to IMDSv2 required.
  metadata_options {
    http_endpoint = "enabled"
    http_tokens   = "required"
  }
  imds_support = "v2.0"

  ami_name        = "ec2fleetd-${var.ec2fleetd_version}-${var.arch}-${local.timestamp}"
  ami_description = "ec2fleetd ${var.ec2fleetd_version} on Amazon Linux 2023 (${var.arch})"

  # Launch templates and scripts find the AMI by these tags (doc/ami.md).
  tags = {
    Name                = "ec2fleetd ${var.ec2fleetd_version} ${var.arch}"
    "ec2fleetd:version" = var.ec2fleetd_version
    "ec2fleetd:arch"    = var.arch
    "ec2fleetd:app"     = var.app_name != "" ? var.app_name : "(user data)"
    base_ami_name       = "{{ .SourceAMIName }}"
  }

  # So that the build instance is recognisable while it runs.
  run_tags = {
    Name = "packer: ec2fleetd ${var.ec2fleetd_version} ${var.arch}"
  }
}

build {
  sources = ["source.amazon-ebs.al2023"]

  # The RPM, and the config when one is given (compact drops the empty one).
  provisioner "file" {
    sources     = compact(["${local.package_dir}/${local.rpm_file}", var.config_file])
    destination = "/tmp/"
  }

  provisioner "shell" {
    environment_vars = [
      "APP_NAME=${var.app_name}",
      "CONFIG_UPLOAD=${local.config_upload}",
    ]
    inline = [
      "set -eu",
      # It becomes a systemd instance name and a file name: keep it plain.
      "case \"$APP_NAME\" in *[!A-Za-z0-9_.-]*) echo \"app_name may hold only letters, digits, _ . -\" >&2; exit 1;; esac",
      "if [ -n \"$CONFIG_UPLOAD\" ] && [ -z \"$APP_NAME\" ]; then echo 'config_file needs app_name: it is installed as /etc/ec2fleetd/APP_NAME.jsonc' >&2; exit 1; fi",
      # A local RPM: dnf pulls its dependencies, if any, from the AL2023 repos.
      "sudo dnf install -y /tmp/ec2fleetd-*.rpm",
      # Fails here, not at the first boot, if the binary cannot run on AL2023
      # (wrong architecture, or built against a newer glibc than 2.34).
      "ec2fleetd --version",
      "if [ -n \"$APP_NAME\" ]; then",
      "  conf=/etc/ec2fleetd/$APP_NAME.jsonc",
      # 0600: a config may carry webhook tokens; only the daemon (root) reads it.
      "  if [ -n \"$CONFIG_UPLOAD\" ]; then sudo install -D -m 0600 -o root -g root \"$CONFIG_UPLOAD\" \"$conf\"; fi",
      # The unit asserts the file exists: an image without it would fail at boot.
      "  if ! sudo test -f \"$conf\"; then echo \"app_name=$APP_NAME but no $conf: set config_file\" >&2; exit 1; fi",
      "  sudo ec2fleetd check \"$conf\"",
      "  sudo systemctl enable \"ec2fleetd@$APP_NAME.service\"",
      "else",
      "  sudo systemctl enable ec2fleetd.service",
      "fi",
      "rm -f /tmp/ec2fleetd-*.rpm \"$CONFIG_UPLOAD\"",
    ]
  }
}
