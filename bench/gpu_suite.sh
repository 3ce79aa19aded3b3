#!/usr/bin/env bash
# The one command for a GPU machine (issue 17): installs the wheels it is given, then measures
#   1. bench/gpu_throughput.py: SSD300-ResNet50 bf16 img/s, (a) real loader, (b) synthetic,
#      (c) loader alone, within its own 90 s budget;
#   2. a training minute: train.py +experiment=honeybee trainer=gpu trainer.max_time=00:00:01:00 on
#      the carried data (no validation inside the minute), its samples/s (320 px tiles and whole
#      frames) read from SpeedMonitor's speed/* scalars in the run's TensorBoard events;
#   3. sliced validation of every val frame with the minute's checkpoint, as training validates
#      (bench/gpu_suite.py validate: trainer.validate, bf16-mixed, detections and loss), frames/s;
#   4. sliced detection alone, frames one at a time vs many frames' tiles per forward pass
#      (bench/sliced_inference.py), on the same frames and checkpoint;
# and writes one JSON, gpu_suite-<device>.json, that merges them with each step's exit code and wall
# time and issue 17's bars (bench/gpu_suite.py report). Each step runs under `timeout` (STEP_LIMITS
# below: 30 + 100 + 110 + 60 + 50 s on a GPU), so the suite ends within 6 minutes even when a step
# hangs; a failed step leaves its part of the JSON empty and the others still run. Estimated for
# a GPU (the suite has not run on one yet): 15 s of install, 80 s of throughput, 90 s of training
# (the minute, start-up, one validation batch, the report), 40 s of validation, 30 s of detection.
#
# The data beside the code (at most 45 MiB; the device call carries 64 MiB in all): every honeybee
# train and valid frame shrunk to 960 px wide at JPEG quality 65, boxes scaled alike (669 frames,
# 39 MiB; the recipe resizes frames to a 960 px longer side anyway). Once, on a machine with
# ../shared/data/honeybee (bench/data_subset is in .gitignore):
#
#     python bench/gpu_throughput.py --make-subset bench/data_subset --subset-images 0 --subset-valid 0 --subset-width 960
#
# The wheels: the GPU image has torch, torchvision, pytorch-lightning, opencv, scipy, matplotlib,
# pillow and tensorboard but no registry, and lacks hydra-core, omegaconf, antlr4-python3-runtime,
# albumentations, albucore, simsimd, stringzilla, pydantic, pydantic-core, annotated-types and
# typing-inspection. Download them once as Python 3.12 wheels into .whl/ (in .gitignore), at this
# venv's versions:
#
#     for p in hydra-core omegaconf albumentations albucore simsimd stringzilla pydantic pydantic-core \
#              annotated-types typing-inspection; do echo "$p==$(python -c "import importlib.metadata as m; print(m.version('$p'))")"; done \
#       | xargs python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#           --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl
#     python -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3     # a source package: build its wheel
#
# Then the device tool's `run` (one call, about 5-6 minutes; leave room for a machine start):
#
#     run(command="bash bench/gpu_suite.sh --out $OUT --logs $OUT", carry=["bench/data_subset", ".whl"], timeout_s=480)
#
# and commit the returned gpu_suite-<device>.json (and gpu_throughput's numbers are inside it) into
# bench/results/. Here, on a CPU, the same steps at tiny budgets check that the suite runs end to end
# (about 2 minutes on 2 cores; writes gpu_suite-<cpu>-smoke.json, which is not a GPU number):
#
#     bash bench/gpu_suite.sh --smoke --data /tmp/beedet-suite-data --out /tmp/suite-results
#
# Options: --smoke, --dry-run (print the commands, run nothing), --data DIR (default
# bench/data_subset), --wheels DIR (default .whl; skipped when it holds no wheel), --out DIR (the
# merged JSON; default bench/results), --logs DIR (copy every step's log there as one file),
# --workers N (default: the cores less 2), --experiment NAME (default honeybee), --train-batch N
# (default 64). PYTHON names the interpreter (default python3).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
MODE=gpu
DRY_RUN=0
DATA="$REPO/bench/data_subset"
WHEELS="$REPO/.whl"
OUT="$REPO/bench/results"
LOGS=""
WORKERS=""
EXPERIMENT=honeybee
TRAIN_BATCH=""
DATA_LIMIT_MIB=45

while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) MODE=smoke ;;
    --dry-run) DRY_RUN=1 ;;
    --data) DATA="$2"; shift ;;
    --wheels) WHEELS="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --logs) LOGS="$2"; shift ;;
    --workers) WORKERS="$2"; shift ;;
    --experiment) EXPERIMENT="$2"; shift ;;
    --train-batch) TRAIN_BATCH="$2"; shift ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_suite.sh: unknown argument $1 (--help lists them)" >&2; exit 2 ;;
  esac
  shift
done
DATA="$(cd "$DATA" 2>/dev/null && pwd || echo "$DATA")"
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"

# Per step: the timeout in seconds (a guard against a hang, not the expected time) and the sizes.
if [ "$MODE" = gpu ]; then
  declare -A STEP_LIMITS=([install]=30 [throughput]=100 [train]=110 [validate]=60 [sliced]=50)
  WORKERS="${WORKERS:-$(( $(nproc) > 3 ? $(nproc) - 2 : 1 ))}"
  TRAIN_BATCH="${TRAIN_BATCH:-64}"
  THROUGHPUT_ARGS=(--workers "$WORKERS")
  TRAIN_ARGS=(trainer=gpu trainer.max_time=00:00:01:00)
  VALIDATE_ARGS=(--batch-size 64 --workers "$WORKERS")
  SLICED_ARGS=(--frames 173 --batch 64 --repeats 1)
else
  declare -A STEP_LIMITS=([install]=60 [throughput]=120 [train]=120 [validate]=90 [sliced]=60)
  WORKERS="${WORKERS:-1}"
  TRAIN_BATCH="${TRAIN_BATCH:-2}"
  THROUGHPUT_ARGS=(--smoke --model ssd300_resnet_slim --warmup 0 --steps 1 --workers "$WORKERS")
  TRAIN_ARGS=(trainer=cpu trainer.max_time=00:00:00:15 trainer.log_every_n_steps=2)
  VALIDATE_ARGS=(--frames 2 --batch-size 2 --workers "$WORKERS")
  SLICED_ARGS=(--frames 2 --batch 2 --repeats 1)
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/beedet-gpu-suite-XXXXXX")"
STEPS="$WORK/steps.tsv"
: > "$STEPS"
echo "== gpu_suite ($MODE): data $DATA, $WORKERS workers, work dir $WORK"

run() {  # run NAME CMD...: the step's output to $WORK/NAME.log and here, its exit code and seconds to steps.tsv
  local name="$1"; shift
  if [ "$DRY_RUN" = 1 ]; then
    printf '[dry run] %s: timeout %s %s\n' "$name" "${STEP_LIMITS[$name]:-600}" "$*"
    return 0
  fi
  local start end code
  start=$(date +%s.%N)
  echo "-- $name: $*"
  timeout --kill-after=10 "${STEP_LIMITS[$name]:-600}" "$@" > "$WORK/$name.log" 2>&1
  code=$?
  end=$(date +%s.%N)
  grep -v -e '^\s*$' -e 'Warning' "$WORK/$name.log" | tail -n 8
  printf '%s\t%s\t%s\n' "$name" "$code" "$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')" >> "$STEPS"
  [ "$code" = 0 ] || echo "-- $name FAILED (exit $code; 124: over its ${STEP_LIMITS[$name]:-600} s limit); see $WORK/$name.log"
  return "$code"
}

# 0. The data and the wheels.
if [ ! -f "$DATA/train.manifest" ] || [ ! -f "$DATA/valid.manifest" ]; then
  echo "no train.manifest / valid.manifest in $DATA: make the subset first (see this file's header)" >&2
  [ "$DRY_RUN" = 1 ] || exit 2
else
  DATA_MIB=$(( $(du -sb "$DATA" | cut -f1) / 1048576 ))
  echo "data: ${DATA_MIB} MiB (limit ${DATA_LIMIT_MIB} MiB)"
  [ "$DATA_MIB" -le "$DATA_LIMIT_MIB" ] || echo "WARNING: the data is over ${DATA_LIMIT_MIB} MiB"
fi
SITE="$WORK/site"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  run install "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
    || { echo "the wheels in $WHEELS did not install; stopping" >&2; exit 1; }
  export PYTHONPATH="$SITE:$PYTHONPATH"
else
  echo "no wheels in $WHEELS: using the packages $PYTHON already has"
fi
export PYTHONUNBUFFERED=1 BEEDET_OUTPUT_DIR="$WORK/outputs"

# 1. Throughput: (a) real loader, (b) synthetic, (c) loader alone.
run throughput "$PYTHON" "$REPO/bench/gpu_throughput.py" --data-root "$DATA" "${THROUGHPUT_ARGS[@]}" --out "$WORK" --device-name suite

# 2. The training minute. One validation of one batch at its time limit (check_val_every_n_epoch
# beyond any epoch reached; ValidateAtTimeLimit validates the last epoch, and train.py reports that
# validation without repeating it): step 3 measures validation.
run train "$PYTHON" "$REPO/train.py" "+experiment=$EXPERIMENT" "data.root=$DATA" data.verify_images=false \
  "data.batch_size=$TRAIN_BATCH" "data.num_workers=$WORKERS" trainer.max_epochs=100000 \
  trainer.check_val_every_n_epoch=100000 trainer.limit_val_batches=1 "${TRAIN_ARGS[@]}"
CKPT=""
if [ "$DRY_RUN" = 1 ]; then
  CKPT="RUN/checkpoints/last.ckpt"  # what the training minute leaves
else
  RUN_DIR="$(sed -n 's/^run dir: //p' "$WORK/train.log" | tail -n 1)"
  [ -n "$RUN_DIR" ] && [ -f "$RUN_DIR/checkpoints/last.ckpt" ] && CKPT="$RUN_DIR/checkpoints/last.ckpt"
  [ -n "$CKPT" ] || echo "the training minute left no checkpoint: validation and sliced detection use none"
fi

# 3. Sliced validation of the val frames, as training validates, with the minute's weights.
if [ -n "$CKPT" ]; then
  run validate "$PYTHON" "$REPO/bench/gpu_suite.py" validate --ckpt "$CKPT" "${VALIDATE_ARGS[@]}" \
    --out "$WORK/validation.json"
fi

# 4. Sliced detection alone: frames one at a time vs many frames' tiles per forward pass.
run sliced "$PYTHON" "$REPO/bench/sliced_inference.py" ${CKPT:+--ckpt "$CKPT"} --data-root "$DATA" "${SLICED_ARGS[@]}" \
  --out "$WORK" --device-name suite

# 5. One JSON.
if [ "$DRY_RUN" = 1 ]; then
  run report "$PYTHON" "$REPO/bench/gpu_suite.py" report --work "$WORK" --data-root "$DATA" --mode "$MODE" --out "$OUT"
  rm -rf "$WORK"
  exit 0
fi
"$PYTHON" "$REPO/bench/gpu_suite.py" report --work "$WORK" --data-root "$DATA" --mode "$MODE" --out "$OUT"
CODE=$?
if [ -n "$LOGS" ]; then
  mkdir -p "$LOGS"
  for f in "$WORK"/*.log; do echo "===== $(basename "$f")"; cat "$f"; done > "$LOGS/gpu_suite-logs.txt"
fi
echo "step logs: $WORK"
exit "$CODE"
