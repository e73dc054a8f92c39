#!/usr/bin/env bash
# The benchmark suite on a GPU machine: pretext on burn's wgpu backend (DEVICE: wgpu, the
# portable WGSL path, or vulkan, SPIR-V) and the PyTorch reference on CUDA, back to back in one
# invocation, the table written to $OUT. Run it once per device for both rows.
#
# Builds nothing. It expects a release binary built elsewhere with the device's feature
# (burn's `cuda` feature cannot build offline, see ../shared/MEASUREMENTS.md):
#
#     cargo build --release --features wgpu,vulkan  # on the build machine; carry target/release/pretext
#     OUT=/tmp/out bench/gpu.sh                      # on the GPU machine, from the repository root
#     DEVICE=wgpu OUT=/tmp/out-wgpu bench/gpu.sh
#
# Environment:
#   PRETEXT_BIN   the carried binary (default target/release/pretext)
#   OUT           where the table, the JSON lines and the machine facts go (default ./bench-gpu)
#   TASKS         default rotation,context,jigsaw,colorize,superres,inpaint,causal-lm,masked-lm
#   BACKBONE      default convnet
#   BATCH         images per step (default 128)
#   STEPS         timed steps per task (default 20)
#   PYTHON        default python3 (needs torch with CUDA)
#   DEVICE        pretext's device: vulkan (default) or wgpu
# Flags:
#   --cpu         fallback to check the script without a GPU: pretext on cpu, PyTorch on cpu
set -euo pipefail

BIN=${PRETEXT_BIN:-target/release/pretext}
OUT=${OUT:-bench-gpu}
TASKS=${TASKS:-rotation,context,jigsaw,colorize,superres,inpaint,causal-lm,masked-lm}
BACKBONE=${BACKBONE:-convnet}
BATCH=${BATCH:-128}
STEPS=${STEPS:-20}
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-vulkan}
TORCH_DEVICE=cuda
if [[ "${1:-}" == "--cpu" ]]; then
    DEVICE=cpu
    TORCH_DEVICE=cpu
fi

mkdir -p "$OUT"
if [[ ! -x "$BIN" ]]; then
    echo "gpu.sh: no binary at $BIN; build it with 'cargo build --release --features vulkan' and carry it" >&2
    exit 2
fi

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "binary: $BIN ($("$BIN" --version 2>/dev/null || echo unknown))"
    echo "cpu: $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/gpu: /'
    else
        echo "gpu: nvidia-smi not found"
    fi
    "$PYTHON" -c 'import torch; print("torch:", torch.__version__, "cuda:", torch.version.cuda, "available:", torch.cuda.is_available())' 2>&1 || echo "torch: not installed"
    command -v vulkaninfo >/dev/null && vulkaninfo --summary 2>/dev/null | grep -E "deviceName|driverName|apiVersion" | sed 's/^ */vulkan: /' || true
    "$BIN" devices 2>&1 | sed 's/^/pretext device /' || true
    echo "command: $BIN bench --tasks $TASKS --backbone $BACKBONE --batch-size $BATCH --steps $STEPS --device $DEVICE --torch-device $TORCH_DEVICE"
} | tee "$OUT/machine.txt"

# Fail fast (and clearly) when the binary lacks the device, before the whole suite runs.
if ! "$BIN" bench --child rotation --batch-size 2 --steps 1 --loader-seconds 0.01 --device "$DEVICE" >"$OUT/probe.json" 2>"$OUT/probe.err"; then
    echo "gpu.sh: pretext cannot run on --device $DEVICE:" >&2
    cat "$OUT/probe.err" >&2
    exit 3
fi

"$BIN" bench --tasks "$TASKS" --backbone "$BACKBONE" --batch-size "$BATCH" --steps "$STEPS" \
    --device "$DEVICE" --torch-device "$TORCH_DEVICE" --python "$PYTHON" \
    --json "$OUT/bench.jsonl" 2> >(tee "$OUT/bench.log" >&2) | tee "$OUT/bench.md"
echo "gpu.sh: table in $OUT/bench.md, raw rows in $OUT/bench.jsonl"
