#!/usr/bin/env bash
# A teacher at a higher input resolution, pre-trained on a CUDA machine within a fixed time, then QA fine-tuned
# and evaluated against its baselines: does a clip representation with more pixels per object and more frames
# per action let the fused QA head (the paper's design) beat the same head on dual features?
#
#   bash benchmarks/gpu_teacher_qa.sh WORK [RESULTS]
#
# WORK holds the data and the runs; RESULTS (default WORK/results) gets the logs, the evaluation tables (JSON)
# and the curves. Settings (environment): SIZE (frame side of the model, 128), FRAMES (frames per clip, 8),
# VIDEOS (synthetic videos, 200), BATCH (pre-training global batch, 32), PRETRAIN_SECONDS (time the pre-training
# schedule is sized to, from a throughput run of PROBE_STEPS (60) steps first, 180; STEPS sets the steps instead), QA_STEPS (300, as on the CPU), WORKERS (clip
# decoding processes, cores - 2), EGOVLP (how to call the CLI, `egovlp`), DEVICE (cuda; cpu only to try the
# script at a toy size) and AMP (bf16). Everything else is the CPU recipe
# (`--recipe cpu_teacher`), so the run differs from the README's CPU teacher in input size, batch and steps.
set -euo pipefail
WORK=${1:?usage: gpu_teacher_qa.sh WORK [RESULTS]}
RESULTS=${2:-$WORK/results}
SIZE=${SIZE:-128} FRAMES=${FRAMES:-8} VIDEOS=${VIDEOS:-200} BATCH=${BATCH:-32}
PRETRAIN_SECONDS=${PRETRAIN_SECONDS:-180} PROBE_STEPS=${PROBE_STEPS:-60} QA_STEPS=${QA_STEPS:-300} DEVICE=${DEVICE:-cuda} AMP=${AMP:-bf16}
WORKERS=${WORKERS:-$(($(nproc) > 3 ? $(nproc) - 2 : 1))}
read -r -a EGOVLP <<<"${EGOVLP:-egovlp}"
mkdir -p "$WORK" "$RESULTS"
t0=$SECONDS
stage() { echo "== $1 (+$((SECONDS - t0)) s)"; }

python3 -c "import sys, torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else
sys.exit('no CUDA device; DEVICE=cpu runs the script at a toy size') if '$DEVICE' == 'cuda' else 'cpu')"
stage "data: $VIDEOS videos"
"${EGOVLP[@]}" data synth --out "$WORK/data" --videos "$VIDEOS" --min-actions 10 --max-actions 25 \
    --workers "$WORKERS" 2>&1 | tail -n 4
teacher=(--recipe cpu_teacher "data=$WORK/data" "model.video.img_size=$SIZE" "model.video.num_frames=$FRAMES"
    "batch_size=$BATCH" "amp=$AMP" "num_workers=$WORKERS" "device=$DEVICE" log_every=10)

if [[ -n ${STEPS:-} ]]; then steps=$STEPS; else
stage "throughput: $PROBE_STEPS steps"
"${EGOVLP[@]}" train pretrain "${teacher[@]}" "out=$WORK/probe" "max_steps=$PROBE_STEPS" ckpt_every=1000 \
    >"$RESULTS/throughput.log" 2>&1
# steps per second between the first and the last step log lines; the fused losses (last quarter) cost more
steps=$(python3 - "$RESULTS/throughput.log" "$PRETRAIN_SECONDS" <<'EOF'
import re, sys
from datetime import datetime
pts = [(datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f"), int(m[2]))
       for m in re.finditer(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+) INFO \S+trainer: step (\d+)/", open(sys.argv[1]).read())]
(ta, sa), (tb, sb) = pts[0], pts[-1]
rate = (sb - sa) / (tb - ta).total_seconds()
print(max(20, int(rate * float(sys.argv[2]) / 1.25)), file=sys.stdout)
print(f"{rate:.2f} steps/s", file=sys.stderr)
EOF
)
fi
stage "pre-training: $steps steps at ${SIZE}px, $FRAMES frames, batch $BATCH"
"${EGOVLP[@]}" train pretrain "${teacher[@]}" "out=$WORK/teacher" "max_steps=$steps" ckpt_every=100000 \
    >"$RESULTS/pretrain.log" 2>&1
tr '\r' '\n' <"$RESULTS/pretrain.log" | grep -E "INFO .*(pre-training|step $steps/)" | tail -n 2 || true
cp "$WORK/teacher/curves.png" "$RESULTS/pretrain_curves.png"

stage "QA fine-tuning: $QA_STEPS steps, fused layers only"
"${EGOVLP[@]}" train finetune --task qa --init "$WORK/teacher/teacher.pt" "data=$WORK/data" "out=$WORK/qa" \
    qa.train=fusion batch_size=32 "max_steps=$QA_STEPS" qa.video_cross_scale=10 "amp=$AMP" \
    "num_workers=$WORKERS" "device=$DEVICE" >"$RESULTS/qa.log" 2>&1
tr '\r' '\n' <"$RESULTS/qa.log" | grep -E "INFO .*(QA head warm start|step $QA_STEPS/|gates-off)" | tail -n 3 || true

stage "QA evaluation"
"${EGOVLP[@]}" eval --task qa --checkpoint "$WORK/qa/finetuned.pt" --data "$WORK/data" --shuffle-frames \
    --device "$DEVICE" --json "$RESULTS/qa_eval.json" 2>"$RESULTS/qa_eval.log" | tee "$RESULTS/qa_eval.txt"
stage "done"
