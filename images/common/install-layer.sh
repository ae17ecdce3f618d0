#!/bin/sh
# Install one layer's hashed lock into the base it was solved against, and prove that nothing of the base changed.
# Usage: install-layer LOCK NAME NGC_BASE   (NAME: the lock's path in the repository; NGC_BASE: for the fix it names)
# 1. the base's fingerprint must be the one the lock records (else one line naming the fix, before pip runs);
# 2. pip installs exactly the lock (--require-hashes --no-deps), with the base's PIP_CONSTRAINT in force;
# 3. pip check passes and every package the base had still has the base's version.
set -eu
lock=$1
name=$2
ngc_base=$3
base-fingerprint check "$lock" "$name" "$ngc_base"
before=$(mktemp)
base-fingerprint freeze >"$before"
python3 -m pip install --quiet --require-hashes --no-deps -r "$lock"
python3 -m pip check
base-fingerprint unchanged "$before"
rm "$before"
