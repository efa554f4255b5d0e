#!/usr/bin/env bash
# Build mamba-ssm's CUDA selective scan for sm_90 only (H100/H200), from its source archive, offline.
# Why: mamba-ssm ships no wheel, and its setup.py compiles for ~9 architectures; one is enough to
# compare our Triton scan against it. Usage (GPU machine):
#   benchmarks/build_mamba_ssm.sh path/to/mamba_ssm-X.tar.gz OUTPUT_DIR
# Prints the build time; the wheel lands in OUTPUT_DIR.
set -euo pipefail
sdist=$(realpath "$1"); out=$(realpath -m "$2"); mkdir -p "$out"
work=$(mktemp -d); tar xzf "$sdist" -C "$work"; cd "$work"/mamba_ssm-*
python3 - <<'PY'
import re
path = "setup.py"
text = open(path).read()
pair = r'cc_flag\.append\("-gencode"\)\s*\n\s*cc_flag\.append\("arch=compute_(\d+),code=sm_\d+"\)'
text = re.sub(pair, lambda m: m.group(0) if m.group(1) == "90" else "pass", text)
open(path, "w").write(text)
PY
grep -c 'compute_' setup.py || true
start=$(date +%s)
TORCH_CUDA_ARCH_LIST=9.0 MAMBA_FORCE_BUILD=TRUE MAX_JOBS=${MAX_JOBS:-16} python3 -m pip wheel -q --no-deps --no-build-isolation . -w "$out"
echo "mamba-ssm build (sm_90 only, MAX_JOBS=${MAX_JOBS:-16}): $(( $(date +%s) - start )) s"
ls -la "$out"
