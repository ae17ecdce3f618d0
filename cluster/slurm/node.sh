#!/usr/bin/env bash
# Entry point of the Slurm cluster's containers (compose/slurm.yaml): munged, then slurmctld (`controller`)
# or slurmd (`compute`) in the foreground. Runs as root, as Slurm's daemons must; jobs run as their submitter.
set -euo pipefail
role=${1:?usage: node.sh controller|compute}

# The host user submits the jobs and owns what they write to the shared storage: every node knows them by id.
uid=${HOST_UID:-1000} gid=${HOST_GID:-1000}
getent group "$gid" >/dev/null || groupadd --gid "$gid" researcher
getent passwd "$uid" >/dev/null || useradd --uid "$uid" --gid "$gid" --no-create-home --home-dir /shared/eurosat researcher

# One key for the whole cluster, made by `make slurm-up` (build/slurm/munge.key) and mounted read-only.
install -o munge -g munge -m 0400 /run/secrets/munge.key /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
runuser -u munge -- /usr/sbin/munged

install -d /var/spool/slurmctld /var/spool/slurmd
case $role in
  controller) exec /usr/sbin/slurmctld -D -i ;;
  compute) exec /usr/sbin/slurmd -D ;;
  *)
    echo "error: node.sh $role: use controller or compute" >&2
    exit 2
    ;;
esac
