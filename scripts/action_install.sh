#!/usr/bin/env bash
# Install hfscan for the GitHub Action: a pinned torch (the CPU build from TORCH_INDEX by default: GitHub-hosted
# runners have no GPU, and PyPI's Linux torch is the multi-GB CUDA build), then hfscan itself (the action's own
# source unless HFSCAN_VERSION names a release).
set -euo pipefail
python -m pip install --quiet --upgrade pip
if [[ -n "${TORCH_INDEX:-}" ]]; then
  [[ "$TORCH_INDEX" =~ ^https://[A-Za-z0-9./_-]+$ ]] || { echo "::error::torch-index must be an https:// URL" >&2; exit 2; }
  python -m pip install --quiet "torch==2.13.0" --index-url "$TORCH_INDEX"
else
  python -m pip install --quiet "torch==2.13.0"
fi
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
