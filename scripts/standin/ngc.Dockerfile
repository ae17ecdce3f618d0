# The stand-in for nvcr.io/nvidia/pytorch:25.10-py3, built by scripts/standin-bases.sh (no registry here).
# What pip and Python see is NGC's: Python 3.12 as the system Python without the "externally managed" guard,
# the packages of ngc-25.10.txt at NGC's versions, torch and torchvision as pre-release builds, CUDA libraries
# that pip does not list, /etc/pip/constraint.txt, PIP_CONSTRAINT set, running as root, NVIDIA_VISIBLE_DEVICES=all.
# The evidence allows two constraint files (shared FACTS, "NGC 25.10 as pip sees it"): CONSTRAINT=full pins every
# installed package (NVIDIA's notes), CONSTRAINT=restricted only numba and llvmlite (the 25.10 build history).
# Context: a folder with python/ (a CPython 3.12 tree for /usr/local, or empty), cuda-base.lock and this folder.
ARG BASE_IMAGE=eurosat/standin-cuda:bookworm
FROM ${BASE_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

# Python 3.12 like NGC's, copied from a build for this distribution; without one, Debian's 3.11 (with a warning).
COPY python/ /usr/local/
# hadolint ignore=DL3008
RUN if [ -x /usr/local/bin/python3.12 ]; then ldconfig && python3 -m ensurepip --default-pip >/dev/null; \
    else apt-get update && apt-get install -y --no-install-recommends python3 python3-pip \
      && rm -rf /var/lib/apt/lists/* /usr/lib/python3*/EXTERNALLY-MANAGED; fi \
    && python3 --version

# torch and torchvision with the CUDA wheels they need to import, then NGC's packages, each exactly as pinned.
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=pip-ca --mount=type=bind,target=/context \
    if [ -f /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && python3 -m pip install --quiet --no-deps pip==25.2 \
    && grep -E '^(torch|torchvision|nvidia-[a-z0-9-]+|cuda-[a-z-]+)==' /context/cuda-base.lock | cut -d' ' -f1 >/tmp/torch.txt \
    && python3 -m pip install --quiet --no-deps --no-warn-script-location -r /tmp/torch.txt \
    && grep -vE '^(torch|torchvision)==' /context/standin/ngc-25.10.txt >/tmp/ngc.txt \
    && python3 -m pip install --quiet --no-deps --no-warn-script-location -r /tmp/ngc.txt \
    && grep -E '^(torch|torchvision)==' /context/standin/ngc-25.10.txt | sed 's/==/=/' >/tmp/relabel.txt \
    && xargs -a /tmp/relabel.txt python3 /context/standin/relabel.py --hide 'nvidia-*' 'cuda-*' -- \
    && mkdir -p /etc/pip \
    && python3 -m pip list --format=freeze --exclude pip >/etc/pip/constraint.txt \
    && python3 -m pip check \
    && python3 -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)' \
    && rm /tmp/torch.txt /tmp/ngc.txt /tmp/relabel.txt
# Last, so that both variants share every layer above.
ARG CONSTRAINT=full
RUN case "$CONSTRAINT" in \
      full) ;; \
      restricted) grep -iE '^(numba|llvmlite)==' /etc/pip/constraint.txt >/tmp/restricted.txt || true; \
        mv /tmp/restricted.txt /etc/pip/constraint.txt ;; \
      *) echo "CONSTRAINT must be full or restricted, not $CONSTRAINT" >&2; exit 1 ;; \
    esac
# NGC's environment as the code reads it: the NVIDIA runtime's request for every GPU, not evidence of one
ENV PIP_CONSTRAINT=/etc/pip/constraint.txt NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility,video
CMD ["bash"]
