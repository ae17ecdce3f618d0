#!/usr/bin/env bash
# Build local stand-ins for the registry base images, for machines that cannot pull them (CI has no registry).
#   $STANDIN_CUDA (eurosat/standin-cuda:bookworm)  Debian bookworm + Python 3.11: stands in for nvidia/cuda.
#   $STANDIN_NGC  (eurosat/standin-ngc:bookworm)   the same + torch/torchvision in the system site-packages,
#       /etc/pip/constraint.txt listing them and PIP_CONSTRAINT set: stands in for nvcr.io/nvidia/pytorch.
# The Dockerfiles and make targets stay the same; only BASE_IMAGE differs. Needs root, debootstrap and docker.
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKER=${DOCKER:-docker}
STANDIN_CUDA=${STANDIN_CUDA:-eurosat/standin-cuda:bookworm}
STANDIN_NGC=${STANDIN_NGC:-eurosat/standin-ngc:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
WORK=${STANDIN_WORKDIR:-/var/tmp/eurosat-standin}
# torch and torchvision exactly as requirements.lock pins them
TORCH=$(grep -E '^torch==' requirements.lock | cut -d' ' -f1)
TORCHVISION=$(grep -E '^torchvision==' requirements.lock | cut -d' ' -f1)

if "$DOCKER" image inspect "$STANDIN_CUDA" "$STANDIN_NGC" >/dev/null 2>&1; then
  echo "stand-in bases already present: $STANDIN_CUDA $STANDIN_NGC"
  exit 0
fi

rm -rf "$WORK" && mkdir -p "$WORK"
rootfs="$WORK/rootfs"
echo "debootstrap bookworm into $rootfs"
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates,passwd \
  bookworm "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log"; exit 1; }
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | "$DOCKER" import --change 'CMD ["bash"]' - "$STANDIN_CUDA" >/dev/null
echo "built $STANDIN_CUDA"

# NGC installs into the system Python, without the Debian 'externally managed' guard.
rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
site="$rootfs/usr/local/lib/python3.11/dist-packages"
python3.11 -m pip install --quiet --no-warn-script-location --target "$site" "$TORCH" "$TORCHVISION"
mkdir -p "$rootfs/etc/pip"
python3.11 -m pip list --path "$site" --format freeze >"$rootfs/etc/pip/constraint.txt"
tar -C "$rootfs" -c . | "$DOCKER" import --change 'CMD ["bash"]' --change 'ENV PIP_CONSTRAINT=/etc/pip/constraint.txt' \
  - "$STANDIN_NGC" >/dev/null
echo "built $STANDIN_NGC ($(wc -l <"$rootfs/etc/pip/constraint.txt") packages in /etc/pip/constraint.txt)"
rm -rf "$WORK"
