#!/usr/bin/env bash
# Device check of `tad wrap` against the REAL upstream code of MTT, FTD, DATM and ATT (GPU, ~10 min).
#
# Needs, in the repository root: .upstream/{mtt,ftd,datm,att}/ (source files exported from the upstream
# repositories, see docs/wrapping.md), .whl/ (kornia, kornia_rs, yacs wheels for Python 3.12),
# and /root/cifar10.npz (decoded CIFAR-10 arrays, given to the scripts with `tad wrap --cifar10`; made from
# .data/cifar10-jpeg.npz when missing).
# For each repository: a short buffer run with TAD on (2 experts x 5 epochs, symmetric 40% noise) and a
# short distill run consuming it (20 iterations, one evaluation), logs under $OUT/<name>/.
# Inner loop: EXTRACTOR=FILE (a `tad features train` file) gives SSL features and distilled anchors; without
# it tad wrap's default applies (the default extractor if present, else the logged chunk-mean fallback).
# TAD_SETS="--set tad.KEY=VALUE ..." adds tad wrap options to every run (e.g. the asymmetric recipe's
# tad.balance_classes=true and tad.warmup_confidence_penalty=1).
# usage: [EXTRACTOR=FILE] [TAD_SETS="..."] bash reproduction/device/verify_on_device.sh [mtt ftd datm att]
set -uo pipefail
ROOT=$(pwd)
OUT=${OUT:-/tmp/tad_wrap_verify}
WORK=/tmp/tad_wrap_work
mkdir -p "$OUT" "$WORK"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
# tad_plugin from this checkout; the wandb stand-in from the test harness
export PYTHONPATH=/tmp/site:$ROOT:$ROOT/tests/upstream_harness
export PYTHONUNBUFFERED=1
ARRAYS=/root/cifar10.npz
[ -f "$ARRAYS" ] || python3 .data/cifar10_jpeg_decode.py .data/cifar10-jpeg.npz "$ARRAYS" || exit 1
FEATURES=()
if [ -n "${EXTRACTOR:-}" ]; then
    [ -f "$EXTRACTOR" ] || { echo "EXTRACTOR=$EXTRACTOR does not exist"; exit 1; }
    FEATURES=(--set "tad.features=$EXTRACTOR")
fi
read -ra TAD_SETS <<< "${TAD_SETS:-}"  # more tad wrap options, e.g. TAD_SETS="--set tad.balance_classes=true"
NOISE=(--noise symmetric --noise-rate 0.4 --set tad.warmup_epochs=1 --set tad.anchor_epoch=3 --set tad.anchor_ipc=10
       "${FEATURES[@]}" "${TAD_SETS[@]}")
BUF=(--dataset=CIFAR10 --model=ConvNet --num_experts=2 --train_epochs=5 --save_interval=2)
DIST=(--dataset=CIFAR10 --ipc=10 --syn_steps=10 --expert_epochs=2 --max_start_epoch=3 --lr_img=100 --lr_lr=1e-05
      --lr_teacher=0.01 --Iteration=20 --eval_it=20 --num_eval=1 --epoch_eval_train=50)

wrap() {  # name method script args...: one wrapped run, its log and exit code under $OUT/name/
    local name=$1 method=$2; shift 2
    local log="$OUT/$name/$(basename "$1" .py).log"
    echo "=== $name: tad wrap $method -- $*" | tee -a "$OUT/summary.txt"
    local start=$SECONDS
    python3 -m tad_plugin.cli wrap "$method" --repo "$ROOT/.upstream/$name" --state "$WORK/$name/state.pt" \
        --cifar10 "$ARRAYS" "${NOISE[@]}" -- "$@" >"$log" 2>&1
    local rc=$?
    echo "    rc=$rc, $((SECONDS - start)) s; $(grep -h 'tad wrap:' "$log" | tail -1)" | tee -a "$OUT/summary.txt"
    grep -h -m2 'embedding the\|no feature extractor\|anchors fall back' "$log" | cut -c1-160 | sed 's/^/    inner loop: /' |
        tee -a "$OUT/summary.txt"
    tail -5 "$log" | sed 's/^/    | /' | tee -a "$OUT/summary.txt"
    return $rc
}

check_buffer() {  # dir: upstream's layout (list of 2 trajectories of 6 snapshots of parameter lists)
    python3 - "$1" <<'PY' 2>&1 | tee -a "$OUT/summary.txt"
import sys, torch
b = torch.load(sys.argv[1] + "/replay_buffer_0.pt")
ok = isinstance(b, list) and len(b) == 2 and all(len(t) == 6 and all(isinstance(s, list) for s in t) for t in b)
print(f"    replay_buffer_0.pt: {len(b)} trajectories x {len(b[0])} snapshots x {len(b[0][0])} tensors; layout ok={ok}")
PY
}

for name in ${@:-mtt ftd datm att}; do
    mkdir -p "$OUT/$name" "$WORK/$name"
    B=$WORK/$name/buffers
    case $name in
    mtt)
        wrap mtt mtt buffer.py "${BUF[@]}" --buffer_path=$B && check_buffer $B/CIFAR10_NO_ZCA/ConvNet &&
        wrap mtt mtt distill.py "${DIST[@]}" --buffer_path=$B ;;
    att)
        wrap att att buffer_ATT.py "${BUF[@]}" --batch_train=256 --buffer_path=$B && check_buffer $B/CIFAR10_NO_ZCA/ConvNet &&
        wrap att att distill_ATT.py "${DIST[@]}" --ema_decay=0.9995 --buffer_path=$B ;;
    ftd)
        wrap ftd ftd buffer/buffer_FTD.py "${BUF[@]}" --zca --rho_max=0.01 --rho_min=0.01 --alpha=0.3 --buffer_path=$B &&
        check_buffer $B/CIFAR10/ConvNet &&
        wrap ftd ftd distill/distill_FTD.py "${DIST[@]}" --zca --ema_decay=0.9995 --buffer_path=$B ;;
    datm)
        # DATM's distill reads a yacs config: the repository's IPC10 config with a short budget and this machine's GPU
        python3 - "$ROOT/.upstream/datm/configs/CIFAR-10/ConvIN/IPC10.yaml" "$WORK/datm/IPC10_short.yaml" "$B" <<'PY'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
cfg.update(device=[0], Iteration=20, eval_it=20, num_eval=1, epoch_eval_train=50, syn_steps=10, buffer_path=sys.argv[3],
           max_start_epoch=3, current_max_start_epoch=2, expansion_end_epoch=10, skip_first_eva=False)
yaml.safe_dump(cfg, open(sys.argv[2], "w"))
PY
        wrap datm datm buffer/buffer_FTD.py "${BUF[@]}" --zca --rho_max=0.01 --rho_min=0.01 --alpha=0.3 --buffer_path=$B &&
        check_buffer $B/CIFAR10/ConvNet &&
        wrap datm datm distill/DATM.py --cfg "$WORK/datm/IPC10_short.yaml" ;;
    esac
    echo "    $name: $([ $? -eq 0 ] && echo PASS || echo FAIL)" | tee -a "$OUT/summary.txt"
done
