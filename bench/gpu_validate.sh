#!/usr/bin/env bash
# Validate the simulator against the executor on a CUDA machine, in under 8 minutes.
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
#      layer_minus_1+lru, none+lfu, multi_layer+least-stale) x caches 25%,50% x batch 1,16
#      -> $OUT/validate/{validation.json,points.csv,scatter.png};
#   4. the executor with all experts resident vs Hugging Face generate on the same
#      random-init switch-base-8 (bfloat16), batch 1 and 16;
#   5. $OUT/gpu-validate-<gpu>.json: GPU name, driver, torch and transformers versions, the
#      calibrated profile, every point, and the summary keys median_abs_error, p95_abs_error,
#      kendall_tau, resident_vs_hf_ratio, best_offload_vs_resident_ratio_b16; a short table last.
#
# Requirements: torch with CUDA, transformers, pyarrow, numpy (present on the GPU machine), and
# simpy and polars (not present there). With no network, carry their wheels in a folder named
# wheels/ at the repository root (e.g. made here with
# `pip download simpy polars polars-runtime-32 tqdm safetensors -d wheels --only-binary=:all:`);
# the script installs them with `pip install --no-index --find-links wheels/ ...` and pregate
# itself with `pip install --no-deps --no-build-isolation -e .` when `import pregate` fails.
set -euo pipefail

cd "$(dirname "$0")/.."
DEVICE="${DEVICE:-cuda}"
QUICK="${QUICK:-0}"
OUT="${OUT:-./gpu-out}"
PY="${PYTHON:-python}"
mkdir -p "$OUT"

if ! "$PY" -c "import simpy, polars" 2>/dev/null; then
    if [ -d wheels ]; then
        "$PY" -m pip install --quiet --no-index --find-links wheels/ simpy polars
    else
        echo "simpy/polars missing and no wheels/ folder: see the header of $0" >&2
        exit 2
    fi
fi
if ! "$PY" -c "import pregate.executor" 2>/dev/null; then
    "$PY" -m pip install --quiet --no-deps --no-build-isolation -e .
fi

if [ "$QUICK" = "1" ]; then
    SHAPES="tiny-switch tiny"; BATCHES="1,4"; CACHES="50%"; POLICIES="none+lru,layer_minus_1+lru"
    SEQS=8; NGROUPS=1; QFLAG="--quick"; DTYPE=float32
else
    SHAPES="switch-base-8 switch-base-64 mixtral-like"; BATCHES="1,16"; CACHES="25%,50%"
    POLICIES="none+lru,layer_minus_1+lru,none+lfu,multi_layer+least-stale"
    SEQS=32; NGROUPS=2; QFLAG=""; DTYPE=bfloat16
fi
[ "$DEVICE" = "cpu" ] && DTYPE=float32

echo "== 1. traces ($SHAPES)"
TRACES=()
for shape in $SHAPES; do
    "$PY" - "$OUT/traces/$shape" "$shape" "$SEQS" "$DTYPE" <<'PYEOF'
import sys
from pregate.executor.shapes import make_shape_trace
folder, shape, seqs, dtype = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
make_shape_trace(folder, shape, seqs=seqs, prompt_len=16, new_tokens=24, dtype=dtype)
PYEOF
    TRACES+=("$OUT/traces/$shape")
done

echo "== 2. calibrate"
TRACE_FLAGS=()
for t in "${TRACES[@]}"; do TRACE_FLAGS+=(--trace "$t"); done
pregate calibrate --device "$DEVICE" $QFLAG --dtype "$DTYPE" -o "$OUT/profile.toml" "${TRACE_FLAGS[@]}"

echo "== 3. validate"
pregate validate "${TRACES[@]}" --profile "$OUT/profile.toml" --device "$DEVICE" --policies "$POLICIES" \
    --cache "$CACHES" --batch-size "$BATCHES" --groups "$NGROUPS" -o "$OUT/validate"

echo "== 4-5. resident executor vs Hugging Face generate; summary"
"$PY" bench/gpu_validate.py --device "$DEVICE" --out "$OUT" --batches "$BATCHES" $QFLAG
