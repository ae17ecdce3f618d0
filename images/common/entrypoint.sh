#!/bin/sh
# The images' entrypoint. A container runs as the host user's UID and GID (compose's user:, make shell, Kubernetes'
# runAsUser), which the image's /etc/passwd does not know: as docker-stacks' start.sh does, that UID gets the
# image user's entry (name, HOME, shell) so that whoami, getpass, pwd.getpwuid and git work, and its GID a group
# entry. /etc/passwd and /etc/group are writable by the image's `app` group (create-user), which every runner adds.
# Then the base image's own entrypoint (NGC's banner and checks), when it has one, runs the command.
set -eu
name=${USER:-app}
if ! whoami >/dev/null 2>&1 && [ -w /etc/passwd ]; then
  # sed --in-place would create a file in /etc, where this user may not: rewrite the file through a copy
  sed "s/^$name:/$name-image:/" /etc/passwd >"/tmp/passwd.$$"
  echo "$name:x:$(id -u):$(id -g):$name:${HOME:-/home/app}:/bin/bash" >>"/tmp/passwd.$$"
  cat "/tmp/passwd.$$" >/etc/passwd && rm -f "/tmp/passwd.$$"
fi
if ! getent group "$(id -g)" >/dev/null 2>&1 && [ -w /etc/group ]; then
  echo "$name-host:x:$(id -g):" >>/etc/group
fi
if [ -x /opt/nvidia/nvidia_entrypoint.sh ]; then exec /opt/nvidia/nvidia_entrypoint.sh "$@"; fi
exec "$@"
