#!/usr/bin/env bash
# One-shot GPU benchmark run (H200): the four GPU targets of BENCHMARKS.md in one script.
#
#   bash benchmarks/h200.sh            # on the device, from the repository root, $OUT set
#
# Steps, in this order (each under its own `timeout`, output tee'd to $OUT/h200.log; a failure
# does not stop the run; the whole script ends within AVVP_BENCH_BUDGET seconds, 480 by default;
# every step before d keeps D_RESERVE seconds for d when its timeout is sized):
#   setup    wheels from .whl/ into /tmp/site (the device image lacks zarr, dask, decord, av, ...)
#   clips    20 synthetic clips (synth CLI), copied to 1,000 distinct ids (input of c and d)
#   c        benchmarks/extract.py per visual extractor, bf16, random init (target e2e >= 0.7x model)
#   e        benchmarks/precision_error.py: bf16 vs fp32 features per extractor on one clip
#   b        benchmarks/select_pairings.py, 1,200 clips, 3 epochs, --parallel 10 (target ratio <= 3)
#   a        benchmarks/train.py fp32, 40-epoch recipe (target <= 60 s); then bf16, 2 epochs
#            (a comes after c and b because its time is the least predictable)
#   d        the real CLI: `extract` of all eight extractors on 1,000 clips, given what is left of
#            the budget; killed with SIGINT at the deadline, with per-store progress sampled
#            every 10 s into $OUT/extract_all_progress.tsv so a partial run still gives a rate.
#
# Files in $OUT (8): h200.log (everything), steps.tsv (per step: rc, wall, timeout),
# summary.json (key numbers of every step), extract_models.json (c), precision_error.json (e), extract_all.json (d's
# --summary, only when d finished), extract_all_progress.tsv (d), gpu.csv (nvidia-smi, 1 s).
#
# .whl/ is not in git. Build it here for the device's Python 3.12 (the carry limit is 64 MiB):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#     --platform manylinux_2_28_x86_64 -d .whl zarr==3.1.6 numcodecs donfig google-crc32c dask \
#     distributed partd locket zict tblib tornado librosa audioread soundfile soxr resampy pooch \
#     platformdirs decorator cffi pycparser decord av==13.1.0 pretrainedmodels munch torchvggish
#   (the CLIP/CLAP/timm extractors import transformers and safetensors lazily: add those wheels,
#   and torchcodec for --decoder torchcodec, only if a run uses them; check the 64 MiB carry limit)
#   then rewrite the av, decord and numcodecs wheels member by member with Python's
#   zipfile.ZIP_LZMA (pip installs them; ~50 MiB in all instead of ~80).
#
# Local dry run on CPU (tiny sizes, the project's venv, no wheel install):
#   AVVP_BENCH_DEVICE=cpu AVVP_BENCH_SMALL=1 AVVP_BENCH_SKIP_INSTALL=1 AVVP_BENCH_PRECISION=fp32 \
#   AVVP_BENCH_PYTHON=.venv/bin/python OUT=$(mktemp -d) bash benchmarks/h200.sh

set -u -o pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 1
START=$SECONDS

DEVICE=${AVVP_BENCH_DEVICE:-cuda}
SMALL=${AVVP_BENCH_SMALL:-0}
PRECISION=${AVVP_BENCH_PRECISION:-bf16}       # extraction precision (c, d)
PY=${AVVP_BENCH_PYTHON:-python3}
DW=${AVVP_BENCH_DECODE_WORKERS:-12}           # decode threads (each drives one decode process)
OUT=${OUT:-$REPO/bench-out}
WORK=${AVVP_BENCH_WORK:-/tmp/avvp-bench}
C_EXTRACTORS=${AVVP_BENCH_C_EXTRACTORS:-resnet152,vgg19_bn,polynet,senet154,openl3_image,r2plus1d_18}
D_EXTRACTORS=${AVVP_BENCH_D_EXTRACTORS:-vggish,openl3_audio,resnet152,vgg19_bn,polynet,senet154,openl3_image,r2plus1d_18}
PREC_EXTRACTORS=${AVVP_BENCH_PREC_EXTRACTORS:-$C_EXTRACTORS}
N_D_EX=$(($(tr -cd , <<< "$D_EXTRACTORS" | wc -c) + 1))

if [ "$SMALL" = 1 ]; then
    BUDGET=${AVVP_BENCH_BUDGET:-7200}
    CAP_SCALE=20    # CPU models are ~100x slower: the per-step caps grow, the budget still bounds all
    DW=${AVVP_BENCH_DECODE_WORKERS:-2}
    TRAIN_ARGS=(--clips 64 --threads 2)
    FP32_EPOCHS=2
    SELECT_ARGS=(--clips 200 --epochs 1)
    SYNTH_CLIPS=2; SYNTH_WORKERS=2; D_CLIPS=${AVVP_BENCH_D_CLIPS:-2}
    declare -A C_CLIPS=()
    C_DEFAULT=1
    D_RESERVE=60
else
    BUDGET=${AVVP_BENCH_BUDGET:-480}
    CAP_SCALE=1
    TRAIN_ARGS=()
    FP32_EPOCHS=40
    SELECT_ARGS=(--clips 1200 --epochs 3)
    SYNTH_CLIPS=20; SYNTH_WORKERS=16; D_CLIPS=${AVVP_BENCH_D_CLIPS:-1000}
    # ~20-30 s each: decode, decode+prepare, model alone and end to end each see these clips.
    declare -A C_CLIPS=([polynet]=96 [senet154]=96)
    C_DEFAULT=128
    D_RESERVE=130   # seconds kept for step d when sizing the earlier steps' timeouts
fi

mkdir -p "$OUT" || exit 1
rm -rf "$WORK"
mkdir -p "$WORK/logs" "$WORK/mpl" "$WORK/numba" || exit 1
LOG="$OUT/h200.log"
STEPS="$OUT/steps.tsv"
: > "$LOG"
printf 'step\trc\twall_s\ttimeout_s\tstart_unix\tend_unix\n' > "$STEPS"

export PYTHONUNBUFFERED=1
export TQDM_MININTERVAL=2          # progress bars go to a file: one update per 2 s is plenty
export MPLCONFIGDIR="$WORK/mpl" NUMBA_CACHE_DIR="$WORK/numba" MPLBACKEND=Agg

log() { echo "[$(date +%H:%M:%S) +$((SECONDS - START))s] $*" | tee -a "$LOG"; }
remaining() { echo $((BUDGET - (SECONDS - START))); }

# run_step NAME CAP RESERVE CMD...: CMD under `timeout` min(CAP, time left - RESERVE), SIGINT
# first (Python ends cleanly), SIGKILL 15 s later; output to stdout, $LOG and $WORK/logs/NAME.log.
run_step() {
    local name=$1 cap=$(($2 * CAP_SCALE)) reserve=$3
    shift 3
    local left=$(($(remaining) - reserve))
    local t=$((cap < left ? cap : left))
    if ((t < 10)); then
        log "SKIP $name: ${left}s left after keeping ${reserve}s for later steps"
        printf '%s\tskipped\t0\t%s\t%s\t%s\n' "$name" "$t" "$(date +%s)" "$(date +%s)" >> "$STEPS"
        return 0
    fi
    log "BEGIN $name (timeout ${t}s): $*"
    local t0=$SECONDS u0
    u0=$(date +%s)
    timeout -s INT -k 15 "$t" "$@" < /dev/null 2>&1 | tee -a "$LOG" "$WORK/logs/$name.log"
    local rc=${PIPESTATUS[0]}
    local wall=$((SECONDS - t0))
    case $rc in
        0) log "END $name: ok in ${wall}s" ;;
        124 | 137) log "END $name: TIMED OUT after ${wall}s (rc $rc)" ;;
        *) log "END $name: FAILED rc $rc after ${wall}s" ;;
    esac
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$wall" "$t" "$u0" "$(date +%s)" >> "$STEPS"
    return 0
}

AVVP=("$PY" -c 'from avvp_pipe.pipeline.cli import main; main()')   # the `avvp-pipe` console script

# ---------------------------------------------------------------- setup
log "avvp-pipe H200 benchmark: device $DEVICE, small $SMALL, budget ${BUDGET}s, extraction $PRECISION, decode workers $DW"
log "repo $REPO, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), work $WORK, out $OUT"
if [ "${AVVP_BENCH_SKIP_INSTALL:-0}" != 1 ]; then
    log "installing $(ls .whl/*.whl | wc -l) wheels into /tmp/site"
    if ! python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tee -a "$LOG"; then
        log "wheel install FAILED: continuing, imports will tell what is missing"
    fi
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"   # repo first: its packages win
log "PYTHONPATH=$PYTHONPATH"

GPU_MON=""
if [ "$DEVICE" != cpu ] && command -v nvidia-smi > /dev/null; then
    nvidia-smi -L 2>&1 | tee -a "$LOG"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv 2>&1 | tee -a "$LOG"
    nvidia-smi --query-gpu=timestamp,utilization.gpu,utilization.memory,memory.used,power.draw,clocks.sm \
        --format=csv,nounits -l 1 > "$OUT/gpu.csv" 2>&1 &
    GPU_MON=$!
fi
lscpu 2>/dev/null | grep -E '^(Model name|CPU\(s\)|Thread|Core)' | tee -a "$LOG"

cat > "$WORK/env_check.py" << 'EOF'
import os, platform, sys
import numpy, torch
print("python", sys.version.split()[0], sys.executable, "| cpus", os.cpu_count(), platform.machine())
print("torch", torch.__version__, "| cuda", torch.version.cuda, "| cudnn", torch.backends.cudnn.version(),
      "| gpu available", torch.cuda.is_available(), "| threads", torch.get_num_threads())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0),
          f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
import importlib, importlib.metadata
for name in ("numpy", "scipy", "torchvision", "timm", "zarr", "numcodecs", "dask", "distributed", "decord", "av",
             "librosa", "soundfile", "soxr", "resampy", "torchvggish", "pretrainedmodels", "munch", "xxhash",
             "h5py", "matplotlib", "click", "tqdm", "numba"):
    try:
        mod = importlib.import_module(name)
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = "?"
        print(f"  {name:16s} {version:12s} {os.path.dirname(mod.__file__ or '')}")
    except Exception as err:  # noqa: BLE001
        print(f"  {name:16s} IMPORT FAILED: {type(err).__name__}: {err}")
from avvp_pipe.extractors import registry
from avvp_pipe.pipeline.extract import resolve_names
for name in resolve_names(None):
    avail = registry.availability(name, None)
    print(f"  extractor {name:14s} missing packages: {avail['missing_packages'] or 'none'}")
EOF
run_step env 90 0 "$PY" "$WORK/env_check.py"

# ---------------------------------------------------------------- clips for c and d
# 20 distinct synthetic clips (320x240, 30 fps, 10 s, H.264 + AAC), copied (not linked) to
# $D_CLIPS distinct 11-character ids: extract without --annotations takes every <id>.mp4.
CLIPS="$WORK/clips/videos"
run_step synth 90 "$D_RESERVE" "${AVVP[@]}" synth "$WORK/synth" --clips "$SYNTH_CLIPS" --seed 1 \
    --workers "$SYNTH_WORKERS" --quiet
mkdir -p "$CLIPS"
mapfile -t SRC < <(ls "$WORK"/synth/videos/*.mp4 2> /dev/null)
if [ "${#SRC[@]}" -gt 0 ]; then
    for ((i = 0; i < D_CLIPS; i++)); do
        cp "${SRC[$((i % ${#SRC[@]}))]}" "$(printf '%s/bench%06d.mp4' "$CLIPS" "$i")"
    done
    log "clips: ${#SRC[@]} synthetic clips copied to $(ls "$CLIPS" | wc -l) ids in $CLIPS ($(du -sh "$CLIPS" | cut -f1))"
else
    log "clips: synth made no clips; steps c and d will fail"
fi

# ---------------------------------------------------------------- c: extraction, per extractor
merge_c() {
    "$PY" - "$WORK" "$OUT/extract_models.json" << 'EOF'
import json, sys
from pathlib import Path
work, out = Path(sys.argv[1]), Path(sys.argv[2])
merged = {p.stem.removeprefix("extract_"): json.loads(p.read_text()) for p in sorted(work.glob("extract_*.json"))}
out.write_text(json.dumps(merged, indent=1))
EOF
}
IFS=, read -r -a C_LIST <<< "$C_EXTRACTORS"
for name in "${C_LIST[@]}"; do
    n=${C_CLIPS[$name]:-$C_DEFAULT}
    run_step "extract_$name" 50 "$D_RESERVE" "$PY" benchmarks/extract.py --videos "$CLIPS" --clips "$n" \
        --extractors "$name" --random-init --device "$DEVICE" --precision "$PRECISION" \
        --decode-workers "$DW" --json "$WORK/extract_$name.json"
    merge_c
done

# ---------------------------------------------------------------- e: bf16 vs fp32 feature error
# Per extractor, one clip: relative L2 and cosine of bf16 features against fp32 (README's
# --precision bf16 advice rests on it). Random init: it bounds the arithmetic error only.
run_step precision 60 "$D_RESERVE" "$PY" benchmarks/precision_error.py --clip "$(printf '%s/bench%06d.mp4' "$CLIPS" 0)" \
    --extractors "$PREC_EXTRACTORS" --random-init --device "$DEVICE" --precision "$PRECISION" \
    --json "$OUT/precision_error.json"

# ---------------------------------------------------------------- b: pairing selection
run_step select 90 "$D_RESERVE" "$PY" benchmarks/select_pairings.py --device "$DEVICE" --parallel 10 \
    --workdir "$WORK/select" --json "$WORK/select.json" "${SELECT_ARGS[@]}"

# ---------------------------------------------------------------- a: training loop
run_step train_fp32 170 "$D_RESERVE" "$PY" benchmarks/train.py --device "$DEVICE" --precision fp32 --repeats 1 \
    --cuda-epochs "$FP32_EPOCHS" --json "$WORK/train_fp32.json" ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"}
run_step train_bf16 45 "$D_RESERVE" "$PY" benchmarks/train.py --device "$DEVICE" --precision bf16 --repeats 1 \
    --cuda-epochs 2 --json "$WORK/train_bf16.json" ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"}

# ---------------------------------------------------------------- d: all eight, real CLI
CACHE_ALL="$WORK/cache_all"
sample_progress() {  # every 10 s: elapsed and feature chunks written per store (one per clip)
    printf 'unix\tscript_s\tstep_s\tmin_done\tper_store\n' > "$OUT/extract_all_progress.tsv"
    local t0=$SECONDS
    while sleep 10; do
        local counts
        counts=$( (cd "$CACHE_ALL" 2> /dev/null && find . -path '*/features/c/*' -type f 2> /dev/null) |
            awk -F/ -v ne="$N_D_EX" '{n[$3]++} END {m = -1; s = ""; for (k in n) {s = s k "=" n[k] " "; if (m < 0 || n[k] < m) m = n[k]}
                     if (length(n) < ne) m = 0; printf "%d\t%s", m, s}')
        printf '%s\t%s\t%s\t%s\n' "$(date +%s)" "$((SECONDS - START))" "$((SECONDS - t0))" "$counts" \
            >> "$OUT/extract_all_progress.tsv"
    done
}
sample_progress &
SAMPLER=$!
D_TIME=$(($(remaining) - 25))   # the rest of the budget, less SIGKILL grace and the summary
run_step extract_all "$D_TIME" 25 "${AVVP[@]}" extract --videos "$CLIPS" --cache "$CACHE_ALL" --dataset bench \
    --extractors "$D_EXTRACTORS" --random-init --precision "$PRECISION" --device "$DEVICE" \
    --decode-workers "$DW" --summary "$OUT/extract_all.json"
kill "$SAMPLER" 2> /dev/null
wait "$SAMPLER" 2> /dev/null

# ---------------------------------------------------------------- summary
[ -n "$GPU_MON" ] && kill "$GPU_MON" 2> /dev/null
"$PY" benchmarks/h200_summary.py --work "$WORK" --out "$OUT" --clips-all "$D_CLIPS" --stores "$N_D_EX" 2>&1 | tee -a "$LOG"
for f in "$OUT"/*; do  # the device returns files < 16 MiB: keep the log's head and tail if it grew
    if [ "$(stat -c %s "$f")" -gt 15000000 ]; then
        { head -c 7000000 "$f"; printf '\n... [cut] ...\n'; tail -c 7000000 "$f"; } > "$f.cut" && mv "$f.cut" "$f"
    fi
done
log "done in $((SECONDS - START))s; files: $(cd "$OUT" && ls | tr '\n' ' ')"
