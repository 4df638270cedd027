#!/usr/bin/env bash
# GPU figures (issue 26): benchmarks/gpu.sh OUTDIR [--tiny] [options of benchmarks/gpu.py]
# Writes OUTDIR/gpu.json and OUTDIR/gpu.md (rewritten after every section) and, for the demo base,
# OUTDIR/demo-base-gpu-<candidate>.tar (split into .00/.01 parts above 15 MiB). Finishes within
# --budget seconds (default 385, env GPU_BENCH_BUDGET). --tiny: tiny models on the CPU in seconds.
# Before a device run, on a CPU: benchmarks/gpu.sh prepare  (the demo base shards, .gpubench/shards/demo-base-gpu).
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 OUTDIR [--tiny] [--budget SECONDS] [--sections ...]  or  $0 prepare [SHARDS_DIR]" >&2
  exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" "$here/benchmarks/gpu.py" "$@"
