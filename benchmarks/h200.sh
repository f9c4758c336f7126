#!/usr/bin/env bash
# The H200 measurement of issue #8 in one call (with peft-bench installed, from any folder):
#
#   bash benchmarks/h200.sh [results folder]        # default: $OUT if set (the device tool), else results/h200
#
# 1. st_adapter on clip_vitb16, 8 frames, 224 px, batch 64, bf16: training throughput and the FLOPs the step
#    really performs (torch's flop counter, forward + backward) against the bf16 matmul rate measured in the
#    same process; plain, then with frozen weights in bf16, then also with torch.compile.
# 2. every method at the same setting: throughput and peak memory (allocated and reserved).
# 3. ST-Adapter's temporal mixing, Conv3d against the time-shifted sum, on the GPU.
#
# SMOKE=1 runs the same steps in a reduced setting on whatever device there is (tiny backbone, batch 2,
# small matmuls), to check the script end to end without a GPU. It leaves out the torch.compile step unless
# SMOKE_COMPILE=1: inductor's CPU compile ran past 20 minutes on the shared 2-core machine.
set -uo pipefail
OUT_DIR=${1:-${OUT:-results/h200}}
PY=${PYTHON:-python}
mkdir -p "$OUT_DIR"
if [[ "${SMOKE:-0}" == 1 ]]; then
  SETTING=(--backbone tiny --frames 8 --batch 2 --precision bf16 --warmup 1 --repeats 1 --matmul-size 256)
  CONV=(--batch 1 --repeats 2)
  ALL=(--methods linear_probe,st_adapter,full_ft)
else
  SETTING=(--backbone clip_vitb16 --frames 8 --batch 64 --precision bf16 --warmup 3 --repeats 10)
  CONV=(--batch 64 --repeats 20)
  ALL=()
fi
COMMON=(--pretrained none "${SETTING[@]}" --results-dir "$OUT_DIR" --tracking-uri "sqlite:///$OUT_DIR/mlflow.db")
status=0
step() {  # one failing step must not cost the others their figures
  echo "== $*" | tee -a "$OUT_DIR/log.txt"
  "$@" 2>&1 | tee -a "$OUT_DIR/log.txt"
  local rc=${PIPESTATUS[0]}
  [[ $rc == 0 ]] || { echo "== FAILED ($rc): $*" | tee -a "$OUT_DIR/log.txt"; status=1; }
}
{ nvidia-smi || true; $PY -c "import torch; print(torch.__version__, torch.cuda.is_available())"; } > "$OUT_DIR/environment.txt" 2>&1
step $PY -m peft_bench.cli bench "${COMMON[@]}" --methods st_adapter --name st_adapter
step $PY -m peft_bench.cli bench "${COMMON[@]}" --methods st_adapter --frozen-bf16 --name st_adapter_frozen_bf16
if [[ "${SMOKE:-0}" != 1 || "${SMOKE_COMPILE:-0}" == 1 ]]; then
  step $PY -m peft_bench.cli bench "${COMMON[@]}" --methods st_adapter --frozen-bf16 --compile --name st_adapter_frozen_bf16_compile
fi
step $PY -m peft_bench.cli bench "${COMMON[@]}" "${ALL[@]}" --name all_methods
DEVICE=$($PY -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
step $PY -m peft_bench.benchmarks.temporal_conv --device "$DEVICE" "${CONV[@]}" --results-dir "$OUT_DIR" --name temporal_conv_$DEVICE
exit $status
