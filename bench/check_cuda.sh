#!/usr/bin/env bash
# The CUDA path, end to end, on the bundled sample: each method, fine-tuning under
# torch.compile, torchrun (one process), evaluate, predict (with TTA and through ONNX), then
# the test suite with the GPU visible. Each step prints its exit status; the script exits
# with the number of steps that failed.
#
#   bash bench/check_cuda.sh [WORKDIR]        (DEVICE=cpu runs the same steps on CPU)
set -uo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d)}
device=${DEVICE:-cuda}
py=${PYTHON:-python3}
data=examples/intel-mini
export IMGCLF_CACHE_DIR=$work/cache PYTHONUNBUFFERED=1
failed=0

step() {
    local name=$1
    shift
    echo "== $name: $*"
    local start=$SECONDS
    "$@"
    local rc=$?
    echo "== $name: rc $rc in $((SECONDS - start)) s"
    [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

train() { "$py" -m imgclf train "$data" --device "$device" -q "$@"; }

"$py" - <<'EOF'
import numba, timm, torch, torchvision
print("torch", torch.__version__, "cuda", torch.version.cuda, "torchvision",
      torchvision.__version__, "timm", timm.__version__, "numba", numba.__version__)
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(), "bf16", torch.cuda.is_bf16_supported())
EOF

step scratch train --method scratch --epochs 3 --out "$work/scratch"
step augment train --method augment --epochs 3 --out "$work/augment"
step scratch-compile train --method scratch --epochs 2 --compile --out "$work/scratch-compile"
step frozen train --method transfer --epochs 3 --out "$work/frozen"
step finetune-compile train --method transfer --finetune 2 --warmup-epochs 2 \
    --finetune-epochs 2 --compile --tta on --out "$work/finetune"
step mobilenet train --method transfer --backbone mobilenetv2_100 --epochs 2 \
    --out "$work/mobilenet"
step torchrun "$py" -m torch.distributed.run --standalone --nproc_per_node 1 -m imgclf \
    train "$data" --device "$device" -q --method transfer --finetune 2 --warmup-epochs 1 \
    --finetune-epochs 2 --sync-bn --out "$work/torchrun"
step evaluate "$py" -m imgclf evaluate "$work/finetune" "$data" --device "$device" -q
step predict "$py" -m imgclf predict "$work/finetune" "$data/test" --device "$device" \
    --tta --out "$work/predict-$device.csv" -q
step predict-cpu "$py" -m imgclf predict "$work/finetune" "$data/test" --device cpu \
    --out "$work/predict-cpu.csv" -q
step export "$py" -m imgclf export "$work/finetune" -q
step predict-onnx "$py" -m imgclf predict "$work/finetune" "$data/test" --engine onnx \
    --device cpu --out "$work/predict-onnx.csv" -q
step agree "$py" - "$work" "$device" <<'EOF'
import csv, sys
from pathlib import Path
work, device = Path(sys.argv[1]), sys.argv[2]
def labels(name):
    with open(work / name, newline="") as f:
        return {row["path"]: row["predicted"] for row in csv.DictReader(f)}
gpu, cpu, onnx = (labels(f"predict-{n}.csv") for n in (device, "cpu", "onnx"))
assert gpu.keys() == cpu.keys() == onnx.keys() and gpu, "the three predictions differ in files"
same = sum(gpu[p] == cpu[p] for p in gpu)
same_onnx = sum(onnx[p] == cpu[p] for p in cpu)
print(f"{device} (TTA) and cpu agree on {same} of {len(gpu)}; onnx and cpu on {same_onnx}")
sys.exit(0 if same >= 0.9 * len(gpu) and same_onnx >= 0.98 * len(cpu) else 1)
EOF
if [ -z "${SKIP_TESTS:-}" ]; then
    step tests "$py" -m pytest -q -x -p no:cacheprovider
fi
"$py" - "$work" <<'EOF'
import json, sys
from pathlib import Path
for f in sorted(Path(sys.argv[1]).glob("*/metrics.json")):
    m = json.loads(f.read_text())
    print(f"{f.parent.name:16} accuracy {m['accuracy']:.4f} ({m['n_samples']} images)")
EOF
echo "== $failed step(s) failed"
exit "$failed"
