#!/usr/bin/env bash
# Build local stand-ins for the registry base images, for machines that cannot pull them (CI has no registry).
#   $STANDIN_CUDA (eurosat/standin-cuda:bookworm)  Debian bookworm, no Python: stands in for nvidia/cuda
#       (with its NVIDIA_VISIBLE_DEVICES=all, which every CUDA image sets).
#   $STANDIN_NGC  (eurosat/standin-ngc:25.10)      stands in for nvcr.io/nvidia/pytorch:25.10-py3 as pip sees it:
#       Python 3.12 and NGC's packages (scripts/standin/ngc-25.10.txt), /etc/pip/constraint.txt, PIP_CONSTRAINT.
#       Its constraint file pins every installed package; $STANDIN_NGC-restricted is the same image with the
#       restricted file the public build history of 25.10 shows (numba and llvmlite only).
# The Dockerfiles and make targets stay the same; only BASE_IMAGE differs. Needs root, debootstrap and docker.
# PYTHON312=<prefix> picks the CPython 3.12 to copy (default: pyenv's newest 3.12); PIP_CA a CA bundle for pip.
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKER=${DOCKER:-docker}
STANDIN_CUDA=${STANDIN_CUDA:-eurosat/standin-cuda:bookworm}
STANDIN_NGC=${STANDIN_NGC:-eurosat/standin-ngc:25.10}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
WORK=${STANDIN_WORKDIR:-/var/tmp/eurosat-standin}
# The shared libraries CPython 3.12 links against (ssl, ffi, sqlite, compression, readline, uuid, expat, nsl).
LIBS=libssl3,libffi8,libsqlite3-0,libbz2-1.0,liblzma5,zlib1g,libreadline8,libncursesw6,libuuid1,libexpat1,libnsl2

rm -rf "$WORK" && mkdir -p "$WORK"
trap 'rm -rf "$WORK"' EXIT

if "$DOCKER" image inspect "$STANDIN_CUDA" >/dev/null 2>&1; then
  echo "stand-in base already present: $STANDIN_CUDA"
else
  rootfs="$WORK/rootfs"
  echo "debootstrap bookworm into $rootfs"
  debootstrap --variant=minbase --include="ca-certificates,passwd,$LIBS" bookworm "$rootfs" "$MIRROR" \
    >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log"; exit 1; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  # nvidia/cuda images set NVIDIA_VISIBLE_DEVICES=all (a request to the NVIDIA runtime, not a GPU): so does this
  tar -C "$rootfs" -c . | "$DOCKER" import --change 'CMD ["bash"]' --change 'ENV NVIDIA_VISIBLE_DEVICES=all' - "$STANDIN_CUDA" >/dev/null
  rm -rf "$rootfs"
  echo "built $STANDIN_CUDA"
fi

# The NGC stand-in is a BuildKit build on top: its layer cache makes a rebuild with unchanged inputs quick.
context="$WORK/ngc"
mkdir -p "$context/python"
python312=${PYTHON312:-$(find "${PYENV_ROOT:-$HOME/.pyenv}/versions" -maxdepth 1 -name '3.12.*' 2>/dev/null | sort -V | tail -n 1)}
if [[ -n $python312 && -x $python312/bin/python3.12 ]]; then
  # the interpreter and its standard library, without its test suite and whatever its site-packages hold
  tar -C "$python312" --exclude='./lib/python3.12/test' --exclude='./lib/python3.12/site-packages/*' -c . |
    tar -C "$context/python" -x
  echo "stand-in NGC gets Python $("$python312/bin/python3.12" -c 'import platform; print(platform.python_version())') from $python312"
else
  echo "warning: no CPython 3.12 build found (set PYTHON312 or install one with pyenv): the stand-in NGC gets" \
    "Debian's Python 3.11, unlike NGC's 3.12, and the image locks will not match it" >&2
fi
cp images/cuda-base/requirements.lock "$context/cuda-base.lock"
cp -r scripts/standin "$context/standin"
secret=()
if [[ -n ${PIP_CA:-} ]]; then secret=(--secret "id=pip-ca,src=$PIP_CA"); fi
for constraint in full restricted; do
  tag=$STANDIN_NGC
  if [[ $constraint != full ]]; then tag=$STANDIN_NGC-$constraint; fi
  DOCKER_BUILDKIT=1 "$DOCKER" build --quiet --file scripts/standin/ngc.Dockerfile --build-arg "BASE_IMAGE=$STANDIN_CUDA" \
    --build-arg "CONSTRAINT=$constraint" "${secret[@]}" --tag "$tag" "$context" >/dev/null
  # shellcheck disable=SC2016 # expanded in the container
  echo "built $tag: $("$DOCKER" run --rm "$tag" sh -c \
    'echo "$(python3 --version), $(python3 -m pip list --format=freeze | grep -c ==) packages, $(grep -c == /etc/pip/constraint.txt) pinned in $PIP_CONSTRAINT"')"
done
