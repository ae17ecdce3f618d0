#!/bin/sh
# Create the non-root user `app` with the given UID and GID. An account already holding them (the
# `ubuntu` user of Ubuntu 24.04 images) is removed first. HOME and its caches are writable by any UID,
# so compose can run the container as the invoking host user and files in bind mounts stay theirs.
set -eu
uid=$1
gid=$2
user=$(getent passwd "$uid" | cut -d: -f1) || true
if [ -n "$user" ]; then userdel --remove "$user" 2>/dev/null || userdel "$user"; fi
group=$(getent group "$gid" | cut -d: -f1) || true
if [ -n "$group" ]; then groupdel "$group"; fi
groupadd --gid "$gid" app
useradd --uid "$uid" --gid "$gid" --home-dir /home/app --create-home --shell /bin/bash app
mkdir -p /home/app/.cache /workspace
chmod 1777 /home/app /home/app/.cache
chown app:app /workspace
