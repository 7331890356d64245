#!/usr/bin/env bash
# The CUDA kit's one command (see README.md beside it): facts about the machine, a CPU smoke run,
# CUDA parity in f32 and bf16, benchmarks at 720p and 1024², and a nano training run on CUDA.
# Every step writes <results>/<step>.log and one line to <results>/summary.txt; a step that fails
# says why and the others still run. At the end <results>.tar.gz holds the whole folder.
#
# Usage: run.sh [RESULTS_DIR]            (default: ./kit-results)
# Environment:
#   KIT_TRAIN_VARIANTS  variants trained side by side on the GPU  (default "CV8x8x8")
#   KIT_TRAIN_SECONDS   wall-clock seconds of training per variant (default 120)
#   KIT_TRAIN_ARGS      extra `tokenscope train` arguments
#   KIT_CHROMA_WEIGHT   `train --chroma-weight` (default 2: without it the nanos learn colour last)
#   KIT_BENCH_RUNS      timed runs per benchmark                   (default 3)
#   KIT_SKIP            step names to skip, space-separated (facts cpu-smoke parity-f32
#                       parity-bf16 bench train)
#   KIT_BUDGET_SECONDS  stop starting new steps after this long    (default 470)
set -uo pipefail

KIT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RESULTS=$(mkdir -p "${1:-kit-results}" && cd "${1:-kit-results}" && pwd)
SUMMARY=$RESULTS/summary.txt
BUDGET=${KIT_BUDGET_SECONDS:-470}
START=$SECONDS
: >"$SUMMARY"

note() { printf '%s\n' "$*" | tee -a "$SUMMARY"; }

# ---------------------------------------------------------------------------------------------
# Binaries and libraries
# ---------------------------------------------------------------------------------------------
BIN=$RESULTS/.bin
mkdir -p "$BIN"
if ! xz -dc "$KIT/bin/binaries.tar.xz" | tar -xf - -C "$BIN"; then
    note "FAIL setup: cannot unpack $KIT/bin/binaries.tar.xz"
    exit 1
fi
if ! xz -dc "$KIT/bin/data.tar.xz" | tar -xf - -C "$BIN"; then
    note "FAIL setup: cannot unpack $KIT/bin/data.tar.xz"
    exit 1
fi
DATA=$BIN/data
CLI=$BIN/tokenscope
TESTS=$BIN/cuda-tests

GPU=no
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    GPU=yes
fi

# Where each CUDA library the binaries need is found: the loader's cache and path, the driver's
# folder, the CUDA toolkit, then the pip wheels of any Python environment on the PATH.
python_lib_dirs() {
    local py
    for py in python3 /opt/torch/.venv/bin/python3; do
        command -v "$py" >/dev/null 2>&1 || continue
        "$py" - <<'EOF' 2>/dev/null
import glob, os, site, sysconfig
roots = set(site.getsitepackages() + [site.getusersitepackages(), sysconfig.get_paths()["purelib"]])
for root in sorted(roots):
    for d in sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib"))):
        print(d)
EOF
    done
}
SEARCH=()
IFS=: read -r -a from_env <<<"${LD_LIBRARY_PATH:-}"
SEARCH+=("${from_env[@]}" /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu
    /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib)
while IFS= read -r d; do SEARCH+=("$d"); done < <(python_lib_dirs)
LIBDIRS=()
MISSING=()
find_lib() { # prints the folder holding $1, or nothing
    local d hit
    hit=$(/sbin/ldconfig -p 2>/dev/null | awk -v n="$1" '$1 == n { print $NF; exit }')
    if [[ -n $hit ]]; then dirname "$hit"; return; fi
    for d in "${SEARCH[@]}"; do
        [[ -n $d && -e $d/$1 ]] && { echo "$d"; return; }
    done
}
while IFS= read -r lib; do
    [[ -n $lib ]] || continue
    dir=$(find_lib "$lib")
    if [[ -n $dir ]]; then
        [[ " ${LIBDIRS[*]} " == *" $dir "* ]] || LIBDIRS+=("$dir")
        echo "$lib => $dir" >>"$RESULTS/libraries.txt"
    else
        MISSING+=("$lib")
        echo "$lib => not found" >>"$RESULTS/libraries.txt"
    fi
done <"$KIT/stubs/NEEDED"
LIBPATH=$(IFS=:; echo "${LIBDIRS[*]}")
if [[ $GPU == no ]]; then
    # No driver: the kit's stand-ins (every function returns an error) let the binaries start; the
    # CPU steps never call them. Real libraries found above come first.
    LIBPATH=${LIBPATH:+$LIBPATH:}$KIT/stubs
    note "no GPU: nvidia-smi finds no device; the CUDA steps are skipped, the CPU steps run"
elif ((${#MISSING[@]})); then
    note "GPU present but these CUDA libraries were not found: ${MISSING[*]} (searched: ldconfig, ${SEARCH[*]}); the CUDA steps will fail to start"
fi
export LD_LIBRARY_PATH=$LIBPATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export TOKENSCOPE_REFERENCE_DIR=$KIT/reference
REF=$KIT/reference

# ---------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------
# step NAME NEEDS_GPU TIMEOUT_S COMMAND...: runs COMMAND with its output in NAME.log.
step() {
    local name=$1 gpu=$2 limit=$3
    shift 3
    local log=$RESULTS/$name.log t0=$SECONDS rc
    if [[ " ${KIT_SKIP:-} " == *" $name "* ]]; then
        note "SKIP $name: in KIT_SKIP"
        return 0
    fi
    if [[ $gpu == gpu && $GPU == no ]]; then
        note "SKIP $name: no GPU"
        return 0
    fi
    if ((SECONDS - START + 10 > BUDGET)); then
        note "SKIP $name: the kit's time budget of ${BUDGET}s is spent"
        return 0
    fi
    ((limit > BUDGET - (SECONDS - START))) && limit=$((BUDGET - (SECONDS - START)))
    export STEP_LIMIT=$limit
    printf '== %s (limit %ss): %s\n' "$name" "$limit" "$*" >"$log"
    # Through bash, so that a step can be one of the functions below (exported).
    timeout --kill-after=10 "$limit" bash -c '"$@"' step "$@" >>"$log" 2>&1
    rc=$?
    local took=$((SECONDS - t0))
    if ((rc == 0)); then
        note "PASS $name [${took}s]"
    elif ((rc == 124 || rc == 137)); then
        note "FAIL $name: timed out after ${limit}s; last lines: $(tail -n 3 "$log" | tr '\n' ' ')"
    else
        note "FAIL $name (exit $rc) [${took}s]: $(grep -E 'error|panicked|FAILED|failed' "$log" | head -n 3 | tr '\n' ' ')"
    fi
    return 0
}

facts() {
    echo "kit: $(head -n 2 "$KIT/BUILD" | tr '\n' ' ')"
    echo "host: $(uname -srm), $(nproc) cores, $(free -g 2>/dev/null | awk '/Mem:/ { print $2 " GiB" }')"
    if [[ $GPU == yes ]]; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap,clocks.max.sm --format=csv
        nvidia-smi
    fi
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    cat "$RESULTS/libraries.txt"
    ldd "$CLI"
    "$CLI" --version
}

cpu_smoke() {
    # The CLI on the CPU: a tiny reference model over its golden input, compared in parity-f32.
    "$CLI" reconstruct --device cpu -m "$REF/CV8x8x8-tiny" "$REF/CV8x8x8-tiny/io.safetensors" \
        -o "$RESULTS/cpu-reconstruct.safetensors" &&
        "$CLI" bench --device cpu --variant CI8x8 --input-shape 1x3x256x256 --runs 1 &&
        "$CLI" train --device cpu --variant CV8x8x8 --data "$DATA"/*.safetensors --steps 2 --batch 1 \
            --crop 64 --max-frames 9 --validate-every 2 --log-every 1 -o "$RESULTS/cpu-train"
}

bench_gpu() {
    local runs=${KIT_BENCH_RUNS:-3} spec variant shape
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$RESULTS/gpu-memory-samples.txt" 2>/dev/null &
    local sampler=$!
    for spec in CV8x8x8:1x3x17x720x1280 CV4x8x8:1x3x17x720x1280 CI8x8:1x3x1024x1024 DI8x8:1x3x1024x1024; do
        variant=${spec%%:*}
        shape=${spec#*:}
        echo "-- $variant $shape bf16"
        "$CLI" bench --device cuda --dtype bf16 --variant "$variant" --input-shape "$shape" --runs "$runs" --json \
            | tee -a "$RESULTS/bench.jsonl" || echo "bench $variant failed"
    done
    echo "-- CV8x8x8 1x3x17x720x1280 f32"
    "$CLI" bench --device cuda --dtype f32 --variant CV8x8x8 --input-shape 1x3x17x720x1280 --runs 1 || true
    kill "$sampler" 2>/dev/null
    echo "device-wide peak from nvidia-smi samples: $(sort -n "$RESULTS/gpu-memory-samples.txt" | tail -n 1) MiB"
    grep -q '"total_ms_per_frame"' "$RESULTS/bench.jsonl"
}

train_gpu() {
    local seconds=${KIT_TRAIN_SECONDS:-120} variant pids=() rc=0
    # Leave a minute of the step's limit for loading, the last validation and the checkpoint.
    ((seconds > STEP_LIMIT - 60)) && seconds=$((STEP_LIMIT - 60))
    ((seconds >= 20)) || { echo "only ${STEP_LIMIT}s left: too little to train"; return 1; }
    echo "training ${KIT_TRAIN_VARIANTS:-CV8x8x8} for ${seconds}s each"
    # shellcheck disable=SC2206 # word splitting intended
    local extra=(${KIT_TRAIN_ARGS:-})
    for variant in ${KIT_TRAIN_VARIANTS:-CV8x8x8}; do
        "$CLI" train --device cuda --variant "$variant" --data "$DATA"/*.safetensors \
            -o "$RESULTS/train-$variant" --time-limit "$seconds" --save-dtype f16 \
            --validate-every 250 --checkpoint-every 1000 --log-every 50 \
            --chroma-weight "${KIT_CHROMA_WEIGHT:-2}" "${extra[@]}" \
            >"$RESULTS/train-$variant.log" 2>&1 &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
    for variant in ${KIT_TRAIN_VARIANTS:-CV8x8x8}; do
        echo "-- $variant"
        tail -n 4 "$RESULTS/train-$variant.log"
    done
    return $rc
}

export KIT RESULTS REF CLI TESTS GPU DATA
export -f facts cpu_smoke bench_gpu train_gpu
note "tokenscope CUDA kit: GPU=$GPU, results in $RESULTS"
step facts any 60 facts
step cpu-smoke any 120 cpu_smoke
step parity-f32 gpu 150 env NVIDIA_TF32_OVERRIDE=0 "$TESTS" cuda_f32 --nocapture --test-threads 1
step parity-bf16 gpu 120 "$TESTS" cuda_bf16 --nocapture --test-threads 1
step bench gpu 240 bench_gpu
step train gpu $((${KIT_TRAIN_SECONDS:-120} + 90)) train_gpu
note "done in $((SECONDS - START))s"

rm -rf "$BIN"
# Optimiser state and the CPU smoke run's outputs stay out of the archive (tens of MB).
tar -czf "$RESULTS.tar.gz" --exclude=train_state.safetensors --exclude=cpu-train \
    --exclude=cpu-reconstruct.safetensors -C "$(dirname "$RESULTS")" "$(basename "$RESULTS")"
echo "results: $RESULTS (packed: $RESULTS.tar.gz)"
