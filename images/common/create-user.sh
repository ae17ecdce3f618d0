#!/bin/sh
# Create the non-root user `app`, UID and GID 1000 in every image: one fixed user, as docker-stacks has, so that
# every user of a commit builds the same image. An account already holding those ids (the `ubuntu` user of
# Ubuntu 24.04 images) is removed first. Containers run as the host user's ids at run time (compose `user:`,
# `make shell`, the dev container, the Slurm nodes): HOME and its caches are writable by any UID, and the entrypoint
# (entrypoint.sh) gives that UID a passwd entry, through /etc/passwd and /etc/group writable by the `app` group that
# every runner adds (docker-stacks makes /etc/passwd group-writable the same way). `su` is refused, as docker-stacks
# refuses it: an entry this user wrote must never authenticate anyone.
set -eu
uid=1000
gid=1000
user=$(getent passwd "$uid" | cut -d: -f1) || true
if [ -n "$user" ]; then userdel --remove "$user" 2>/dev/null || userdel "$user"; fi
group=$(getent group "$gid" | cut -d: -f1) || true
if [ -n "$group" ]; then groupdel "$group"; fi
groupadd --gid "$gid" app
useradd --uid "$uid" --gid "$gid" --home-dir /home/app --create-home --shell /bin/bash app
mkdir -p /home/app/.cache /workspace
chmod 1777 /home/app /home/app/.cache
chown app:app /workspace
chgrp app /etc/passwd /etc/group
chmod g+w /etc/passwd /etc/group
if [ -f /etc/pam.d/su ]; then echo "auth requisite pam_deny.so" >>/etc/pam.d/su; fi
