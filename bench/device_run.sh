#!/usr/bin/env bash
# The MiniLM-L6 benchmarks on a lent GPU machine (no registry, no ../shared there).
# Prepare here:  python bench/bench_minilm.py pack .benchcarry/pack && tar cJf .benchcarry/data.tar.xz -C .benchcarry/pack data
#                && mv .benchcarry/pack/minilm .benchcarry/minilm   (the carry: ~50 MB)
# Run there:     bash bench/device_run.sh   (results in $OUT: results.jsonl, summary.md, bench.log)
set -u
OUT=${OUT:-/tmp/hfscan-bench-out}
mkdir -p /tmp/hb "$OUT"
tar xJf .benchcarry/data.tar.xz -C /tmp/hb
export HFSCAN_BENCH_DATA=/tmp/hb/data HFSCAN_BENCH_CACHE=/tmp/hb/cache PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, huggingface_hub, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'hub', huggingface_hub.__version__, 'peft', peft.__version__, 'cuda', torch.cuda.is_available())"
python3 bench/bench_minilm.py --device cuda --workers "${BENCH_WORKERS:-12}" --threads 1 --steps "${BENCH_STEPS:-500}" --tasks "${BENCH_TASKS:-sst2,olid,agnews}" \
  --base-model .benchcarry/minilm --deadline "${BENCH_DEADLINE:-470}" --out "$OUT" 2>&1 | grep -v Warning
