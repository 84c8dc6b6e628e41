#!/usr/bin/env bash
# Install hfscan for the GitHub Action: a pinned CPU torch, then hfscan itself (the action's own
# source unless HFSCAN_VERSION names a release).
set -euo pipefail
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"
if [[ -n "${HFSCAN_VERSION:-}" ]]; then
  if [[ ! "$HFSCAN_VERSION" =~ ^[0-9]+(\.[0-9]+)*([a-z0-9.+-]*)$ ]]; then
    echo "::error::version must be a release number like 0.1.0" >&2
    exit 2
  fi
  python -m pip install --quiet "hfscan==${HFSCAN_VERSION}"
else
  python -m pip install --quiet "${GITHUB_ACTION_PATH:?}"
fi
hfscan --version
