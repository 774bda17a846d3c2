#!/usr/bin/env bash
# The GPU benchmarks in one prepared run, for a machine with one NVIDIA GPU (written for the H200
# that the device runner lends: Python 3.12, PyTorch + CUDA, transformers, accelerate, opencv,
# scikit-learn, scikit-image, pandas, pyarrow preinstalled; NO network, and no PyAV, facenet-pytorch,
# soxr, soundfile, opensmile or DVC). Whole run: at most 8 minutes (BUDGET_S, below).
#
#     bash bench/gpu.sh                      # figures to $OUT, else bench/results/gpu-<date>
#     ONLY="text face" bash bench/gpu.sh     # some steps only (names: env install train text audio
#                                            #   audio-batching face opensmile)
#     DRY_RUN=1 PYTHON=.venv/bin/python bash bench/gpu.sh   # CPU, tiny models, a few utterances:
#                                            #   proves the same command lines parse and run
#
# What it needs beside the repository: the wheels of the packages the benches import that the
# machine lacks, in bench/wheels/ (or $WHEELS). Fill that folder on a machine with PyPI access
# (any OS: pip only downloads), from the repository root; about 40 MB, for CPython 3.12 on x86-64
# Linux (the device's `python3` is 3.12; set --python-version to its version if that changes):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d bench/wheels \
#     av==18.1.0 facenet-pytorch==2.5.3 soxr==1.1.0 soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 \
#     opensmile==2.6.0 audinterface==1.4.0 audobject==0.7.13 audeer==2.7.0 audformat==1.4.3 \
#     audiofile==1.6.1 audmath==1.4.4 audresample==1.3.6 asttokens==3.0.2 oyaml==1.0 \
#     iso3166==3.0.0 iso639-lang==2.6.3
#
# (the versions of the project's tested .venv). Why each: av (extractors/audio.py and face.py, the
# demo corpus's mp4 writing), soundfile (WAV I/O) with cffi + pycparser (its binding), soxr
# (resampling), facenet-pytorch (MTCNN + InceptionResnetV1; --no-deps, so it pulls no torch: it uses
# the machine's torch, torchvision, pillow, requests, tqdm), opensmile and the part of its dependency
# tree the machine lacks (audinterface, audobject, audeer, audformat, audiofile, audmath,
# audresample, asttokens, oyaml, iso3166, iso639-lang; it also needs pandas, pyarrow, numpy, pyyaml,
# packaging, tqdm, which the machine has). DVC and the `mer` console script are not needed: the
# benches import the project from the checkout (PYTHONPATH=.). `--no-deps` everywhere, so keep one
# version of each; the install below skips any distribution the machine already has.
#
# bench/wheels is git-ignored: copy it to the GPU machine with the checkout. At most 8 result files
# are assumed to come back from $OUT: this script writes exactly 8 (env.txt, steps.tsv and one log
# per bench step). Give the whole run about 9 minutes of wall time (machine start-up comes on top);
# rerun single steps with ONLY=....
#
# Time budget (seconds; each step runs under `timeout`, cut further to what is left of BUDGET_S, and
# skipped when under 10 s is left; a failed or timed-out step is recorded and the next one runs):
#   env 15, install 30, train 40, text 80, audio 90, audio-batching 50, face 100, opensmile 60 = 465
# Sizes were chosen to finish inside those budgets: each bench row is 3 fresh processes (Python,
# torch and CUDA start-up, about 5-10 s each, is most of a step), and the progress lines are flushed,
# so a step cut short still leaves its finished rows in its log.

set -u -o pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
OUT=${OUT:-bench/results/gpu-$(date +%Y-%m-%d)}
WHEELS=${WHEELS:-bench/wheels}
SITE=${SITE:-/tmp/mer-bench-site}           # the wheels are installed here (--target), not into the image's venv
WORK=${WORK:-/tmp/mer-bench-gpu}            # shared by the extract steps: the demo corpus and models are built once
BUDGET_S=${BUDGET_S:-465}
ONLY=${ONLY:-}
mkdir -p "$OUT" "$WORK"
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if [[ ${DRY_RUN:-0} == 1 ]]; then  # same command lines, CPU-sized
    DEVICE=cpu SIZE=tiny BATCHING_SIZE=tiny WORKERS=2 OPENSMILE_WORKERS=2 TRAIN_STEPS=2 BATCHING_UTTERANCES=8
    TEXT_SIZES="4 8" AUDIO_SIZES="4 8" FACE_SIZES="2 4" OPENSMILE_SIZES="4 8"
    STEP_CAP=170 BUDGET_S=100000  # every step gets STEP_CAP s (this is no timing run)
else
    DEVICE=cuda SIZE=large BATCHING_SIZE=large WORKERS=6 OPENSMILE_WORKERS=8 TRAIN_STEPS=20 BATCHING_UTTERANCES=128
    TEXT_SIZES="128 512" AUDIO_SIZES="64 256" FACE_SIZES="16 64" OPENSMILE_SIZES="32 128"
fi

START=$(date +%s)
STEPS="$OUT/steps.tsv"
printf 'step\texit\tseconds\tbudget_s\tcommand\n' >"$STEPS"

# step NAME BUDGET_S LOG COMMAND...: run COMMAND under timeout, output appended to LOG (and shown),
# exit status and seconds to steps.tsv (124: timed out; "skipped": no time left or not in ONLY)
step() {
    local name=$1 budget=$2 log=$3 t0 rc left
    shift 3
    if [[ -n $ONLY && " $ONLY " != *" $name "* ]]; then
        printf '%s\tskipped\t0\t0\t%s\n' "$name" "$*" >>"$STEPS"
        return
    fi
    left=$((START + BUDGET_S - $(date +%s)))
    [[ ${DRY_RUN:-0} == 1 ]] && budget=$STEP_CAP
    ((budget > left)) && budget=$left
    if ((budget < 10)); then
        printf '%s\tskipped\t0\t%s\t%s\n' "$name" "$budget" "$*" >>"$STEPS"
        echo "[$name] skipped: ${left} s of the budget left"
        return
    fi
    t0=$(date +%s)
    printf '\n$ %s\n# step %s, budget %s s, started %s\n' "$*" "$name" "$budget" "$(date -u +%FT%TZ)" | tee -a "$log"
    if declare -F "$1" >/dev/null; then  # a function of this script: timeout runs programs only
        timeout --kill-after=5 "$budget" bash -c "$1" 2>&1 | tee -a "$log"
    else
        timeout --kill-after=5 "$budget" "$@" 2>&1 | tee -a "$log"
    fi
    rc=${PIPESTATUS[0]}
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - t0))" "$budget" "$*" >>"$STEPS"
    echo "[$name] exit $rc after $(($(date +%s) - t0)) s (budget $budget s)" | tee -a "$log"
}

env_info() {
    date -u +%FT%TZ
    uname -a
    echo "cores: $(nproc)"
    free -g 2>/dev/null | head -2
    nvidia-smi || echo "nvidia-smi failed: $?"
    "$PY" -c 'import torch; print(torch.__version__, torch.cuda.get_device_name())' || echo "no CUDA device: $?"
    "$PY" -c 'import sys; print("python", sys.version.split()[0], sys.executable)'
    "$PY" -m pip list 2>/dev/null | grep -iE '^(torch|torchvision|transformers|tokenizers|accelerate|numpy|pandas|pyarrow|scikit-image|opencv-python-headless|av|facenet-pytorch|soxr|soundfile|opensmile) '
}

# the wheels whose distribution the interpreter lacks, installed with --no-deps into $SITE; then the
# imports the benches need
install_wheels() {
    local missing
    if [[ -d $WHEELS ]] && compgen -G "$WHEELS/*.whl" >/dev/null; then
        missing=$("$PY" - "$WHEELS" <<'EOF'
import importlib.metadata as md, pathlib, sys
for wheel in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    try:
        md.version(wheel.name.split("-")[0])  # the distribution name, normalised by importlib.metadata
    except md.PackageNotFoundError:
        print(wheel)
EOF
        ) || return
        if [[ -n $missing ]]; then
            echo "installing into $SITE:" $missing
            # shellcheck disable=SC2086  # one wheel path per word
            "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" $missing || return
        else
            echo "every wheel in $WHEELS is installed already"
        fi
    else
        echo "no wheels in $WHEELS: nothing installed"
    fi
    "$PY" -c 'from pipeline.core.torchvision_compat import ensure_torchvision_ops
ensure_torchvision_ops()  # before torchvision loads, as the benches do (needed on a CPU-only torch)
import av, soundfile, soxr, opensmile, facenet_pytorch, pyarrow
import pipeline.stages.extract, extractors.opensmile, extractors.facenet, model.cmath
print("imports ok: av", av.__version__, "opensmile", opensmile.__version__)'
}

export PY WHEELS SITE
export -f env_info install_wheels

extract=("$PY" bench/extract.py --device "$DEVICE" --workers "$WORKERS" --work "$WORK")

step env 15 "$OUT/env.txt" env_info
step install 30 "$OUT/env.txt" install_wheels
# CMATH training on synthetic corpus-shaped features, bf16 autocast on CUDA
step train 40 "$OUT/train.log" "$PY" bench/train.py --device "$DEVICE" --steps "$TRAIN_STEPS"
# the first extract step also makes the demo corpus (about 15 s), kept in $WORK for the others
# shellcheck disable=SC2086  # the sizes are two words
step text 80 "$OUT/extract-text.log" "${extract[@]}" --modalities text --model-size "$SIZE" --sizes $TEXT_SIZES
# shellcheck disable=SC2086
step audio 90 "$OUT/extract-audio.log" "${extract[@]}" --modalities audio --model-size "$SIZE" --sizes $AUDIO_SIZES
# padded batching of a layer-norm wav2vec2-large: batch 1 against 8 and 32, model alone
step audio-batching 50 "$OUT/extract-audio-batching.log" "$PY" bench/extract.py --device "$DEVICE" --audio-batching \
    --batching-size "$BATCHING_SIZE" --batching-utterances "$BATCHING_UTTERANCES" --batch-sizes 8 32
# FaceNet has one size: MTCNN + InceptionResnetV1 as in the CPU runs
# shellcheck disable=SC2086
step face 100 "$OUT/extract-face.log" "${extract[@]}" --modalities face --model-size "$SIZE" --sizes $FACE_SIZES
# openSMILE is CPU work (no GPU): (b) spreads it over more decode workers
# shellcheck disable=SC2086
step opensmile 60 "$OUT/extract-opensmile.log" "$PY" bench/extract.py --device "$DEVICE" --workers "$OPENSMILE_WORKERS" \
    --work "$WORK" --modalities opensmile --model-size "$SIZE" --sizes $OPENSMILE_SIZES

echo
echo "total $(($(date +%s) - START)) s; figures in $OUT:"
column -t -s $'\t' "$STEPS" 2>/dev/null || cat "$STEPS"
