#!/usr/bin/env bash
# The GPU session of issue 20, in one device call (benchmarks/README.md, "GPU session"):
#
#   bash benchmarks/gpu_prepare.sh      # here, first: .whl/ and .gpu_data/
#   device run: command "bash benchmarks/gpu_session.sh", carry [".whl", ".gpu_data"],
#               timeout_s 600
#
# In order, each part under its own `timeout` and all within BUDGET_S seconds (a part gets at
# most what is left; one that fails or times out is logged and the next runs):
#   install   the carried wheels and sdists into /tmp/site (pesq: a NaN stand-in if it fails)
#   versions  python, torch, CUDA, GPU, pyro, hydra, librosa, pesq
#   tests     tests/test_cuda.py and the benchmark's CUDA graph test  -> $OUT/test_cuda.log
#   bench128  train_step.py --step eager,graph --precision float32,bfloat16, all models, speech,
#             B=128
#                                                  -> $OUT/speech_cuda_B128_steps.json
#   train     EPOCHS (500) epochs of DKF and of SRNN on data=asterisk16k, overlapping chunks
#             (data.train_chunk_hop=10), train.step=graph, both at once (each its own process
#             and timeout), each then evaluated             -> $OUT/runs.tar.gz
#   bench8    the same benchmark at B=8 (last: what time is left)
#                                                  -> $OUT/speech_cuda_B8_steps.json
# Everything printed goes to $OUT/session.log as it runs. $OUT gets at most 6 files.
#
# Settings (environment): PARTS (the parts to run, default all, in the order above), BUDGET_S
# (560), EPOCHS (500), TRAIN_S (330: one training's limit), EVAL_S (90), DEVICE (cuda),
# TRAIN_STEP (graph), BENCH_STEPS (eager,graph), BENCH_PRECISION (float32,bfloat16), BENCH_ARGS,
# BENCH_B128_ARGS, TRAIN_EXTRA (more overrides), THREADS (2), PY (python3).
# Dry run on a CPU (no install, tiny sizes; about 3 minutes):
#   OUT=/tmp/gpu_out DEVICE=cpu PY=.venv/bin/python PARTS="versions tests bench128 train bench8" \
#     EPOCHS=2 TRAIN_STEP=eager BENCH_STEPS=eager,compile TRAIN_EXTRA=data.max_files=24 \
#     BENCH_ARGS="--models vae --T 4 --x-dim 8 --steps 1 --warmup 0 --rounds 1 --no-memory" \
#     PYRO_DVAE_DATA=/work/shared/data bash benchmarks/gpu_session.sh
set -u
cd "$(dirname "$0")/.."

: "${OUT:?set OUT to the folder whose files come back}"
PARTS=${PARTS:-install versions tests bench128 train bench8}
BUDGET_S=${BUDGET_S:-560}
EPOCHS=${EPOCHS:-500}
TRAIN_S=${TRAIN_S:-330}
EVAL_S=${EVAL_S:-90}
DEVICE=${DEVICE:-cuda}
TRAIN_STEP=${TRAIN_STEP:-graph}
BENCH_STEPS=${BENCH_STEPS:-eager,graph}
BENCH_PRECISION=${BENCH_PRECISION:-float32,bfloat16}
BENCH_ARGS=${BENCH_ARGS:---models all --shape speech --T 50 --rounds 1 --no-memory --steps 10}
BENCH_B128_ARGS=${BENCH_B128_ARGS:---steps 20}
TRAIN_EXTRA=${TRAIN_EXTRA:-}
THREADS=${THREADS:-2}
PY=${PY:-python3}
RESERVE_S=20 # for packing the runs at the end
WORK=/tmp/gpu_session
LOG=$OUT/session.log

mkdir -p "$OUT" "$WORK"
export OUT EPOCHS EVAL_S DEVICE TRAIN_STEP BENCH_STEPS BENCH_PRECISION BENCH_ARGS TRAIN_EXTRA THREADS PY WORK
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
[[ -d .gpu_data ]] && export PYRO_DVAE_DATA=$PWD/.gpu_data
START=$SECONDS

say() { echo "[gpu_session $((SECONDS - START)) s] $*" | tee -a "$LOG"; }
left() { echo $((BUDGET_S - (SECONDS - START))); }
wanted() { [[ " $PARTS " == *" $1 "* ]]; }

limit() { # LIMIT_S [KEEP_S]: LIMIT_S, or less so that KEEP_S (+ the reserve) stay in the budget
  local t=$(($(left) - RESERVE_S - ${2:-0}))
  echo $((t < $1 ? t : $1))
}

part() { # NAME LIMIT_S COMMAND...: the command under timeout, output to the session log
  local name=$1 t=$2 rc
  shift 2
  if ((t < 15)); then
    say "$name: skipped, $(left) s of the budget left"
    return 1
  fi
  say "$name: start, timeout $t s: $*"
  timeout -k 10 "$t" bash -c '"$@"' "$name" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  say "$name: exit $rc$( ((rc == 124)) && echo " (timed out after $t s)")"
  return "$rc"
}

install() {
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || return
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-build-isolation \
    --target /tmp/site .whl/antlr4-python3-runtime-*.tar.gz || return
  if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-build-isolation \
    --target /tmp/site .whl/pesq-*.tar.gz; then
    echo "pesq did not build: a stand-in whose every score is NaN (evaluate best.pt here)"
    printf '%s\n' '"""Stand-in written by gpu_session.sh: pesq did not build here."""' \
      'class PesqError(Exception): ...' '' \
      'def pesq(*args, **kwargs): raise PesqError("pesq is not installed")' >/tmp/site/pesq.py
  fi
}

versions() {
  "$PY" - <<'EOF'
import importlib.metadata as m, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "|", torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")
for name in ("pyro-ppl", "hydra-core", "librosa", "soundfile", "pystoi", "pesq", "numpy", "numba"):
    try:
        print(name, m.version(name))
    except m.PackageNotFoundError:
        print(name, "not installed (pesq: the NaN stand-in)" if name == "pesq" else "MISSING")
EOF
  nvidia-smi -L 2>/dev/null || true
}

bench() { # B EXTRA_ARGS...: the step benchmark at batch size B -> $OUT/speech_<device>_B<B>_steps.json
  local B=$1
  shift
  # shellcheck disable=SC2086  # BENCH_ARGS holds several arguments
  "$PY" benchmarks/train_step.py --device "$DEVICE" --step "$BENCH_STEPS" --B "$B" \
    --precision "$BENCH_PRECISION" $BENCH_ARGS "$@" --json "$OUT/speech_${DEVICE}_B${B}_steps.json"
}

train_and_evaluate() { # MODEL TRAIN_LIMIT_S: one 500-epoch run, then its evaluation
  local model=$1 dir=$WORK/runs/$1 rc
  export PYRO_DVAE_CACHE=$WORK/cache_$model # its own feature cache: the two runs race otherwise
  # shellcheck disable=SC2086  # TRAIN_EXTRA holds several overrides
  timeout -k 10 "$2" "$PY" experiments/run.py model="$model" data=asterisk16k \
    data.train_chunk_hop=10 train.epochs="$EPOCHS" train.step="$TRAIN_STEP" device="$DEVICE" \
    threads="$THREADS" train.progress=false hydra.run.dir="$dir" $TRAIN_EXTRA \
    >"$WORK/runs/$model.train.log" 2>&1
  rc=$?
  echo "train $model: exit $rc$( ((rc == 124)) && echo " (timed out after $2 s)")"
  if [[ -f $dir/best.pt ]]; then
    timeout -k 10 "$EVAL_S" "$PY" experiments/evaluate.py run_dir="$dir" device="$DEVICE" \
      >"$WORK/runs/$model.eval.log" 2>&1
    echo "evaluate $model: exit $?"
  fi
}

train_both() { # LIMIT_S: DKF and SRNN at once, each its own process and timeout
  rm -rf "$WORK/runs" # a rerun on a still-warm machine trains afresh, not into the old runs
  mkdir -p "$WORK/runs"
  train_and_evaluate dkf "$1" &
  train_and_evaluate srnn "$1" &
  wait
  for model in dkf srnn; do
    echo "--- $model: last epochs (metrics.csv), results.md, end of the logs"
    tail -n 3 "$WORK/runs/$model/metrics.csv" 2>/dev/null
    cat "$WORK/runs/$model/results.md" 2>/dev/null
    tail -n 5 "$WORK/runs/$model.train.log" "$WORK/runs/$model.eval.log" 2>/dev/null
  done
}

pack_runs() { # the runs without last.pt and eval/ -> $OUT/runs.tar.gz (under 16 MiB)
  [[ -d $WORK/runs ]] || return 0
  tar -czf "$OUT/runs.tar.gz" -C "$WORK" --exclude=last.pt --exclude=.last.pt.tmp \
    --exclude=eval runs
  if (($(stat -c %s "$OUT/runs.tar.gz") > 16 * 2 ** 20)); then
    tar -czf "$OUT/runs.tar.gz" -C "$WORK" --exclude='*.pt' --exclude='*.tmp' --exclude=eval runs
  fi
  say "runs.tar.gz: $(du -h "$OUT/runs.tar.gz" | cut -f1)"
}

tests() { # the CUDA tests -> $OUT/test_cuda.log
  "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py \
    tests/benchmarks/test_train_step.py::test_graph_step_runs_on_cuda_and_reports_its_keys 2>&1 |
    tee "$OUT/test_cuda.log"
  return "${PIPESTATUS[0]}"
}

export -f install versions tests bench train_and_evaluate train_both
say "start: parts '$PARTS', budget $BUDGET_S s, device $DEVICE, data ${PYRO_DVAE_DATA:-unset}"
if wanted install; then part install "$(limit 120)" install; fi
if wanted versions; then part versions "$(limit 60)" versions; fi
if wanted tests; then part tests "$(limit 150)" tests; fi
# shellcheck disable=SC2086  # BENCH_B128_ARGS holds several arguments
if wanted bench128; then part bench128 "$(limit 180)" bench 128 $BENCH_B128_ARGS; fi
if wanted train; then
  t=$(limit "$TRAIN_S" $((EVAL_S + 15)))
  if ((t >= 30)); then part train $((t + EVAL_S + 15)) train_both "$t"; else say "train: skipped"; fi
fi
if wanted bench8; then part bench8 "$(limit 150)" bench 8; fi
pack_runs
say "done: $(ls "$OUT" | tr '\n' ' ')"
