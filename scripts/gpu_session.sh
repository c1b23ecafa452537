#!/usr/bin/env bash
# One GPU session: install fa2bench, run the GPU tests, run a sweep, and leave everything worth keeping in $OUT.
# Anyone with a CUDA GPU can run it from the repository root; it needs no network once the dependencies are in.
#
#   FA2BENCH_GIT_COMMIT=$(git rev-parse HEAD) FA2BENCH_GIT_DIRTY=0 OUT=/tmp/out bash scripts/gpu_session.sh [STAGE ...]
#
# Stages (default: env tests sweep), in the order given:
#   env          GPU, driver, clocks and power limit, versions, ncu, fa2bench's peaks and measured ceilings
#   tests        pytest -m gpu with 8 workers on the one GPU (Triton's autotuning compiles in parallel), then the
#                big-memory tests (tens of GB each) and those that compare timings with one worker
#                -> $OUT/gpu-tests.log, $OUT/gpu-tests-alone.log
#   sweep        fa2bench sweep $SWEEP (default: the quick preset) into results/$NAME, stopped with SIGINT after
#                $SECS seconds (default 500) so it ends cleanly; run the stage again to --resume -> $OUT/$NAME.tgz
#   report       fa2bench report results/$NAME, packed with the run -> $OUT/$NAME.tgz
#   jobs         each line of $JOBS is `NAME SECONDS COMMAND...` (a shell command line, quotes and all); by default
#                .carry/jobs-CARD.txt where there is one for this GPU (CARD from nvidia-smi's name: h100, h200, a100),
#                so a call can plan for whichever card comes, else .carry/jobs.txt. Each command runs under
#                `timeout -s INT` (a sweep stops cleanly and resumes next time) and results/NAME is packed after it
#                -> $OUT/NAME.tgz, every job's output in $OUT/jobs.log. Several runs fit one call this way. SECONDS
#                `rest`: what is left of $CALL_SECS (default 540) since the script started, less 20 s for packing,
#                so a last sweep takes the rest of a call and still ends cleanly.
#
# A Triton cache packed by an earlier call ($TRITON_TGZ, default .carry/triton.tgz, carried with the tree) is
# unpacked first, so a fresh machine skips the compiles and autotuning that call already did; with KEEP_TRITON=1
# what this call added to it (newer than the restore) is packed -> $OUT/triton-new.tgz (the whole cache grew past
# the 16 MiB a returned file may have), to fold into the carried one on the machine that calls:
#   d=$(mktemp -d) && tar xzf .carry/triton.tgz -C $d && tar xzf triton-new.tgz -C $d && tar czf .carry/triton.tgz -C $d .
#
# On a lent GPU machine (a copy of the work tree, one command of at most 10 minutes per call):
# - the copy may carry a stale .git (HEAD = the commit the session started from): pass the commit in as a literal
#   value (FA2BENCH_GIT_COMMIT=<git rev-parse HEAD here>, FA2BENCH_GIT_DIRTY=0) so meta.json records the right one;
# - split long work over calls: `bash scripts/gpu_session.sh env tests`, then `... sweep` (again to resume), then
#   `... report`; keep the next call within the machine's idle time so Triton's disk cache stays warm;
# - see CONTRIBUTING.md for the lessons behind each step.
set -uo pipefail
export PYTHONUNBUFFERED=1
STARTED=$(date +%s); CALL_SECS=${CALL_SECS:-540}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
NAME=${NAME:-gpu-session}
SECS=${SECS:-500}
SWEEP=${SWEEP:---preset quick}
[ -n "${FA2BENCH_GIT_COMMIT:-}" ] || echo "warning: FA2BENCH_GIT_COMMIT is not set; meta.json may record a stale commit"
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
TRITON_CACHE=$HOME/.triton/cache; TRITON_TGZ=${TRITON_TGZ:-.carry/triton.tgz}
mkdir -p "$TRITON_CACHE"; RESTORED=$(mktemp)  # tar keeps the archive's times: files newer than this are new
[ -f "$TRITON_TGZ" ] && tar xzf "$TRITON_TGZ" -C "$TRITON_CACHE" \
  && echo "Triton cache restored: $(ls "$TRITON_CACHE" | wc -l) entries"
for stage in ${*:-env tests sweep}; do
  echo "=== $stage ($(date -u +%T))"
  case "$stage" in
    env)
      nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,temperature.gpu --format=csv
      python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"
      command -v ncu >/dev/null && ncu --version | tail -1
      fa2bench info --measure ;;
    tests)
      python3 -m pytest -q -n 8 -m "gpu and not big_memory and not alone" -p no:cacheprovider tests \
        >"$OUT/gpu-tests.log" 2>&1
      echo "gpu tests exit $?"; tail -1 "$OUT/gpu-tests.log"; grep -E "^(FAILED|ERROR)" "$OUT/gpu-tests.log" | head -30
      python3 -m pytest -q -m "gpu and (big_memory or alone)" -p no:cacheprovider tests >"$OUT/gpu-tests-alone.log" 2>&1
      echo "big-memory and timing tests (one worker) exit $?"; tail -1 "$OUT/gpu-tests-alone.log" ;;
    sweep)
      # shellcheck disable=SC2086  # $SWEEP is a list of options
      timeout -s INT -k 60 "$SECS" fa2bench sweep $SWEEP --out "results/$NAME" --resume >"$OUT/$NAME.log" 2>&1
      echo "sweep exit $? (130: stopped at $SECS s; run the stage again to resume)"; tail -25 "$OUT/$NAME.log"
      tar czf "$OUT/$NAME.tgz" -C results "$NAME" ;;
    report)
      fa2bench report "results/$NAME" && tar czf "$OUT/$NAME.tgz" -C results "$NAME" ;;
    jobs)
      if [ -z "${JOBS:-}" ]; then
        card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -oiE '[a-z][0-9]{2,3}' | head -1)
        JOBS=.carry/jobs-${card,,}.txt; [ -f "$JOBS" ] || JOBS=.carry/jobs.txt
      fi
      echo "jobs from $JOBS"
      while read -r job secs cmd; do
        [[ -z "$job" || "$job" == \#* ]] && continue
        [ "$secs" = rest ] && secs=$(( CALL_SECS - 20 - ($(date +%s) - STARTED) ))
        [ "$secs" -gt 0 ] || { echo "$job skipped: no time left of CALL_SECS=$CALL_SECS"; continue; }
        echo "--- $job ($secs s) $(date -u +%T)"
        # the line through bash, so its quotes hold (pytest -k "a and b"); bash runs a lone command in its place, so
        # timeout's SIGINT reaches the sweep itself
        timeout -s INT -k 30 "$secs" bash -c "$cmd" >>"$OUT/jobs.log" 2>&1 </dev/null
        echo "$job exit $?"; [ -d "results/$job" ] && tar czf "$OUT/$job.tgz" -C results "$job"
      done <"$JOBS"
      tail -c 4000 "$OUT/jobs.log" ;;
    *) echo "unknown stage $stage (env, tests, sweep, report, jobs)"; exit 2 ;;
  esac
done
if [ -n "${KEEP_TRITON:-}" ]; then  # an `if`, not `&&`: the script's status is the last stage's, not this test's
  (cd "$TRITON_CACHE" && find . -newer "$RESTORED" \( -name '*.json' -o -name '*.cubin' -o -name '*.so' \) \
     | tar czf "$OUT/triton-new.tgz" -T -)
fi
