#!/usr/bin/env bash
# Validate the simulator against the executor on a CUDA machine, in under 8 minutes (about 5 on an H200).
#
#   bench/gpu_validate.sh                      # on a CUDA machine; writes ./gpu-out
#   OUT=/tmp/gpu-out bench/gpu_validate.sh
#   DEVICE=cpu QUICK=1 bench/gpu_validate.sh   # smoke test of the whole script on a CPU (about a minute)
#
# Steps, all written under $OUT (default ./gpu-out):
#   1. synthetic traces of three model shapes (switch-base-8, switch-base-64, a Mixtral-like
#      shape with 4096x14336 gated experts; QUICK: tiny shapes), bfloat16 on cuda;
#   2. pregate calibrate -> $OUT/profile.toml (+ profile.calibration.json);
#   3. pregate validate over the traces x 4 speculation/caching pairs (none+lru,
#      layer_minus_1+lru, none+lfu, multi_layer+least-stale) x caches 25%,50% x batch 1,16,
#      two rounds, each point keeping its faster one
#      -> $OUT/validate/{validation.json,points.csv,scatter.png};
#   4. the executor with all experts resident vs Hugging Face generate on the same
#      random-init switch-base-8 (bfloat16), batch 1 and 16;
#   5. $OUT/gpu-validate-<gpu>.json: GPU name, driver, torch and transformers versions, the
#      calibrated profile, every point, and the summary keys median_abs_error, p95_abs_error,
#      kendall_tau, resident_vs_hf_ratio, best_offload_vs_resident_ratio_b16; a short table last.
#
# Requirements: torch with CUDA, transformers, pyarrow, numpy (present on the GPU machine), and
# simpy and polars (not present there). With no network, carry their wheels in a folder .whl/ (or
# wheels/) at the repository root, made on a machine with an index, e.g.
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 -d .whl simpy==4.1.2 polars==2.1.0 polars-runtime-32==2.1.0
# The script installs them into /tmp/pregate-site and, when pregate is not installed, puts this
# checkout on the path under the pregate namespace (no build step, nothing else to fetch).
# Each step's failure is reported and the later steps still run; the log is $OUT/log.txt.
set -uo pipefail

cd "$(dirname "$0")/.."
DEVICE="${DEVICE:-cuda}"
QUICK="${QUICK:-0}"
OUT="${OUT:-./gpu-out}"
TRACES_DIR="${TRACES_DIR:-$OUT/traces}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT" "$TRACES_DIR"
exec > >(tee "$OUT/log.txt") 2>&1
T0=$(date +%s)
step() { echo "== $1 (at $(( $(date +%s) - T0 )) s)"; }
export PYTHONUNBUFFERED=1

if ! "$PY" -c "import simpy, polars" 2>/dev/null; then
    WHEELS=$(ls .whl/*.whl wheels/*.whl 2>/dev/null || true)
    if [ -z "$WHEELS" ]; then
        echo "simpy/polars missing and no wheels in .whl/ or wheels/: see the header of $0" >&2
        exit 2
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/pregate-site $WHEELS || exit 2
    export PYTHONPATH="/tmp/pregate-site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PY" -c "import pregate.executor" 2>/dev/null; then
    # the checkout's folders under one pregate package, as pyproject.toml's package-dir maps them
    rm -rf /tmp/pregate-src && mkdir -p /tmp/pregate-src/pregate
    cp pregate/*.py /tmp/pregate-src/pregate/
    for part in traces tracer simulator executor analysis; do ln -s "$PWD/$part" "/tmp/pregate-src/pregate/$part"; done
    export PYTHONPATH="/tmp/pregate-src${PYTHONPATH:+:$PYTHONPATH}"
    "$PY" -c "import pregate.executor, simpy, polars" || exit 2
fi
PREGATE=("$PY" -m pregate)
[ "$DEVICE" = "cuda" ] && { nvidia-smi --query-gpu=name,driver_version,memory.total,pcie.link.gen.max,pcie.link.width.max --format=csv || true; }
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

if [ "$QUICK" = "1" ]; then
    SHAPES="tiny-switch tiny"; BATCHES="1,4"; CACHES="50%"; POLICIES="none+lru,layer_minus_1+lru"
    SEQS=8; NGROUPS=1; QFLAG="--quick"; DTYPE=bfloat16; REPEATS=1
else
    SHAPES="switch-base-8 switch-base-64 mixtral-like"; BATCHES="1,16"; CACHES="25%,50%"
    POLICIES="none+lru,layer_minus_1+lru,none+lfu,multi_layer+least-stale"
    SEQS=32; NGROUPS=2; QFLAG=""; DTYPE=bfloat16; REPEATS=2
fi
[ "$DEVICE" = "cpu" ] && DTYPE=float32

step "1. traces ($SHAPES)"
TRACES=()
echo "{" > "$OUT/traces.json"
SEP=""
for shape in $SHAPES; do
    # the Mixtral-like shape copies 350 MB experts: fewer decode steps keep the run short
    NEW=24; [ "$shape" = "mixtral-like" ] && NEW=8
    printf '%s"%s": {"seqs": %d, "prompt_len": 16, "new_tokens": %d}' "$SEP" "$shape" "$SEQS" "$NEW" >> "$OUT/traces.json"
    SEP=", "
    "$PY" - "$TRACES_DIR/$shape" "$shape" "$SEQS" "$DTYPE" "$NEW" <<'PYEOF' || exit 1
import sys
from pregate.executor.shapes import make_shape_trace
folder, shape, seqs, dtype, new = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
make_shape_trace(folder, shape, seqs=seqs, prompt_len=16, new_tokens=new, dtype=dtype)
PYEOF
    TRACES+=("$TRACES_DIR/$shape")
done

echo "}" >> "$OUT/traces.json"

step "2. calibrate"
TRACE_FLAGS=()
for t in "${TRACES[@]}"; do TRACE_FLAGS+=(--trace "$t"); done
"${PREGATE[@]}" calibrate --device "$DEVICE" $QFLAG --dtype "$DTYPE" -o "$OUT/profile.toml" "${TRACE_FLAGS[@]}" || exit 1

step "3. validate"
"${PREGATE[@]}" validate "${TRACES[@]}" --profile "$OUT/profile.toml" --device "$DEVICE" --policies "$POLICIES" \
    --cache "$CACHES" --batch-size "$BATCHES" --groups "$NGROUPS" --repeats "$REPEATS" -o "$OUT/validate"
VALIDATE_RC=$?

step "4-5. resident executor vs Hugging Face generate; summary"
"$PY" bench/gpu_validate.py --device "$DEVICE" --out "$OUT" --batches "$BATCHES" $QFLAG
RC=$?
step "done (validate rc $VALIDATE_RC, summary rc $RC)"
exit $(( VALIDATE_RC || RC ))
