#!/usr/bin/env bash
# CUDA check and CUDA overhead (issue 11, part 4): run from the repository root on a GPU machine.
#
#   OUT=results/cuda bash benchmarks/cuda_check.sh            # writes overhead-cuda.csv + log
#   DEVICE=cpu QUICK=1 OUT=/tmp/x bash benchmarks/cuda_check.sh  # dry run of the script here
#   EPOCH_ONLY=1 OUT=results/cuda bash benchmarks/cuda_check.sh  # step 4 only (about a minute on a GPU)
#   BATCHES="64 512" OVERHEAD_ONLY=1 PAIRS=25 BIG_PAIRS=12 CASES="--n-proj 1 --no-reference" ...
#                                  # batch sizes, pairs, fewer cases; OVERHEAD_ONLY skips steps 1 and 2
#
# 1) the CUDA tests; 2) train -> attack (PGD, FGSM, noise, AutoAttack) -> margins -> report on
# the GPU; 3) `jrbench overhead` for lenet (MNIST shape), ddnet and resnet18 (CIFAR-10 shape),
# with the tape and with autograd (resnet18 has BatchNorm: autograd only), all rows in one table;
# 4) whole-epoch time with a host read every step against one per 50 steps (issue 17, item 6):
# benchmarks/bench_epoch_sync.py, into epoch-sync.csv.
set -uo pipefail
out=${OUT:-results/cuda}
dev=${DEVICE:-cuda}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
exec > >(tee -a "$out/cuda-check.log") 2>&1
jr() { echo "+ jrbench $*"; "$py" -m jrbench "$@"; local rc=$?; [ $rc -eq 0 ] || echo "!! exit $rc: jrbench $*"; }
if [ -n "${QUICK:-}" ]; then pairs=(--pairs 2 --warmup 1); big=(--pairs 1 --warmup 1); else
  pairs=(--pairs "${PAIRS:-50}" --warmup 10); big=(--pairs "${BIG_PAIRS:-30}" --warmup 5); fi
cases=(${CASES:-})   # e.g. CASES="--n-proj 1 --jr-subsample 16 --no-reference": fewer cases
# each table is appended to overhead-cuda.csv as soon as it is measured (a cut-off run keeps them)
keep() { "$py" - "$out" <<'PY'
import pathlib, sys
import pandas as pd
out = pathlib.Path(sys.argv[1])
part, table = out / "part.csv", out / "overhead-cuda.csv"
if part.exists():
    new = pd.read_csv(part)
    both = pd.concat([pd.read_csv(table), new], ignore_index=True) if table.exists() else new
    both.to_csv(table.with_suffix(".tmp"), index=False)
    table.with_suffix(".tmp").replace(table)
    part.unlink()
    cols = ["model", "batch_size", "jr_backend", "case", "ratio_median", "ratio_q25", "ratio_q75", "steps_timed"]
    print(new[[c for c in cols if c in new]].to_string(index=False))
PY
}

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
"$py" -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"

if [ -z "${OVERHEAD_ONLY:-}${EPOCH_ONLY:-}" ]; then
echo "== 1. CUDA tests"
"$py" -m pytest -q -p no:cacheprovider tests/test_margins.py tests/test_spectra.py tests/test_noise_examples.py tests/test_certify.py tests/test_crown.py -k cuda || echo "!! CUDA tests failed"

echo "== 2. end to end on $dev"
tmp=$(mktemp -d)
jr train --dataset synth-digits --reg jacobian --train-subset 2000 --test-subset 500 --epochs 1 \
   --device "$dev" --out "$tmp/run" --quiet
jr attack "$tmp/run" --pgd --fgsm --noise --autoattack --autoattack-eps-linf 0.1 --n-examples 100 \
   --device "$dev" --quiet
jr margins "$tmp/run" --n-examples 100 --device "$dev" --quiet
jr certify "$tmp/run" --lipschitz --ibp --crown --alpha-crown --complete --eps-linf 0.01 --eps-linf 0.02 \
   --eps-l2 0.1 --timeout 5 --n-examples 20 --device "$dev" --quiet
jr report "$tmp/run" --out "$tmp/report" --quiet && ls "$tmp/report"
fi

if [ -z "${EPOCH_ONLY:-}" ]; then
echo "== 3. overhead on $dev"
for b in ${BATCHES:-64}; do
  ref=(); [ "$b" -le 64 ] || ref=(--no-reference)   # the per-row reference only at batch 64
  for backend in auto autograd; do
    jr overhead --device "$dev" --model lenet --random-batch --batch-size $b --jr-backend $backend \
       --jr-every 4 --jvp "${ref[@]}" "${cases[@]}" "${pairs[@]}" --out "$out/part.csv" --quiet; keep
    jr overhead --device "$dev" --dataset cifar10 --random-batch --model ddnet --batch-size $b \
       --jr-backend $backend --jr-every 4 --jvp "${ref[@]}" "${cases[@]}" "${pairs[@]}" --out "$out/part.csv" --quiet; keep
  done
  jr overhead --device "$dev" --dataset cifar10 --random-batch --model resnet18 --batch-size $b \
     --jr-every 4 --jvp --no-reference "${cases[@]}" "${big[@]}" --out "$out/part.csv" --quiet; keep
done
fi

echo "== 4. whole-epoch time on $dev: host read every step / every 50 steps"
if [ -n "${QUICK:-}" ]; then epoch=(--pairs 1 --train 640); else epoch=(--pairs "${EPOCH_PAIRS:-10}"); fi
PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" "$py" benchmarks/bench_epoch_sync.py --device "$dev" "${epoch[@]}" \
  --out "$out/epoch-sync.csv" || echo "!! bench_epoch_sync failed"
