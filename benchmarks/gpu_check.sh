#!/usr/bin/env bash
# caffecompat on a CUDA device: the golden training runs with -gpu 0 and the CaffeNet / ResNet-50 training
# benchmarks on ONNX Runtime's CUDA provider, with one summary at the end.
#
# The device machine has no network and takes at most 64 MiB of carried files per call, while the
# onnxruntime-gpu wheel alone is ~255 MB. So the files travel in parts over consecutive calls and are kept
# on the warm machine between them (outside the checkout, which each call replaces):
#
#   here, once:     bash benchmarks/gpu_check.sh prepare
#                   downloads the wheels (onnxruntime-gpu, lmdb, protobuf for the device's CPython 3.12),
#                   copies the ../shared files the checks read (caffe-golden, the two prototxts), packs
#                   them into one tar and splits it into .gpu_parts/part-NN (60 MiB each) with SHA256SUMS;
#                   .gpu_parts/ is git-ignored through .git/info/exclude; prints the calls to make.
#   device, call k: bash benchmarks/gpu_check.sh stash    (carry: .gpu_parts/part-NN and .gpu_parts/SHA256SUMS)
#                   copies the part that came into $STASH and lists what is still missing.
#   device, last:   bash benchmarks/gpu_check.sh run      (carry: the last part and SHA256SUMS)
#                   stashes it, checks every part's SHA-256, reassembles, makes a venv with onnxruntime-gpu
#                   in it over the image's packages (its numpy, onnx, opencv, h5py), runs the checks.
#
# Consecutive calls must come within the machine's warm time (the parts live in /tmp there); a fresh machine
# starts with none, and `stash` says so. Nothing here changes OPENBLAS_* or any test.
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PARTS="$ROOT/.gpu_parts"
STASH="${CAFFECOMPAT_GPU_STASH:-/tmp/caffecompat-gpu-stash}"
WORK="${CAFFECOMPAT_GPU_WORK:-/tmp/caffecompat-gpu}"
PART_SIZE=60M
ORT_GPU="${ORT_GPU:-onnxruntime-gpu}"   # e.g. ORT_GPU=onnxruntime-gpu==1.23.2 to pin

die() { echo "gpu_check: $*" >&2; exit 1; }

prepare() {
    local shared="$ROOT/../shared" staging="$ROOT/.gpu_staging"
    [ -d "$shared/caffe-golden" ] || die "needs $shared/caffe-golden beside the checkout"
    grep -qx '/.gpu_parts/' "$ROOT/.git/info/exclude" 2>/dev/null || echo '/.gpu_parts/' >> "$(git -C "$ROOT" rev-parse --git-path info/exclude)"
    grep -qx '/.gpu_staging/' "$ROOT/.git/info/exclude" 2>/dev/null || echo '/.gpu_staging/' >> "$(git -C "$ROOT" rev-parse --git-path info/exclude)"
    rm -rf "$staging" "$PARTS" && mkdir -p "$staging/wheels" "$staging/shared/zoo/resnet50" \
        "$staging/shared/bvlc-models/models/bvlc_reference_caffenet" "$PARTS" || die "cannot make $staging"
    local plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
                --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
    # The image has numpy, onnx, opencv-python-headless, h5py, flatbuffers, sympy, packaging (KINDS.md);
    # onnxruntime-gpu's remaining needs and ours that it lacks travel as wheels.
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
        -d "$staging/wheels" "$ORT_GPU" coloredlogs humanfriendly "lmdb>=1.4" "protobuf>=7.35.1,<8" \
        || die "pip download failed"
    cp -r "$shared/caffe-golden" "$staging/shared/" || die "cannot copy caffe-golden"
    cp "$shared/zoo/resnet50/ResNet-50-deploy.prototxt" "$staging/shared/zoo/resnet50/"
    cp "$shared/bvlc-models/models/bvlc_reference_caffenet/"*.prototxt \
        "$staging/shared/bvlc-models/models/bvlc_reference_caffenet/"
    tar -C "$staging" -cf - wheels shared | split -b "$PART_SIZE" -d -a 2 - "$PARTS/part-" || die "split failed"
    (cd "$PARTS" && sha256sum part-* > SHA256SUMS)
    rm -rf "$staging"
    local parts=("$PARTS"/part-*) n=0
    echo "gpu_check: ${#parts[@]} parts in $PARTS ($(du -sh "$PARTS" | cut -f1)); make these device calls, back to back:"
    for p in "${parts[@]}"; do
        n=$((n + 1))
        local verb=stash; [ "$n" -eq "${#parts[@]}" ] && verb=run
        echo "  run(command='bash benchmarks/gpu_check.sh $verb', carry=['.gpu_parts/$(basename "$p")', '.gpu_parts/SHA256SUMS'], timeout_s=$([ $verb = run ] && echo 600 || echo 120))"
    done
}

stash() {
    mkdir -p "$STASH" || die "cannot make $STASH"
    if [ -f "$PARTS/SHA256SUMS" ]; then
        cp "$PARTS/SHA256SUMS" "$STASH/"
    elif [ ! -f "$STASH/SHA256SUMS" ]; then
        die "no .gpu_parts/SHA256SUMS came with this call nor an earlier one on this machine (carry it)"
    fi
    for p in "$PARTS"/part-*; do
        [ -f "$p" ] && cp "$p" "$STASH/" && echo "gpu_check: stashed $(basename "$p")"
    done
    local missing
    missing=$(cd "$STASH" && awk '{print $2}' SHA256SUMS | while read -r f; do [ -f "$f" ] || echo "$f"; done)
    if [ -n "$missing" ]; then
        echo "gpu_check: still missing in $STASH:" $missing
        return 2
    fi
    echo "gpu_check: every part is in $STASH"
}

run_checks() {
    stash || die "parts missing (a fresh machine starts with none: send every part again, back to back)"
    (cd "$STASH" && sha256sum -c --quiet SHA256SUMS) || die "a part is corrupt: send it again"
    rm -rf "$WORK" && mkdir -p "$WORK" || die "cannot make $WORK"
    cat "$STASH"/part-* | tar -C "$WORK" -xf - || die "cannot reassemble the parts"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    # The image's python3 is itself a venv (/opt/torch/.venv), whose packages --system-site-packages does not
    # reach: a .pth file appends its site-packages after ours, so our onnxruntime-gpu shadows its onnxruntime.
    python3 -m venv --system-site-packages "$WORK/venv" || die "cannot make the venv"
    local py="$WORK/venv/bin/python" image_site
    image_site=$(python3 -c 'import site; print(site.getsitepackages()[0])')
    echo "$image_site" > "$("$py" -c 'import site; print(site.getsitepackages()[0])')/image-packages.pth"
    "$py" -m pip install -q --no-index --no-deps --no-compile "$WORK"/wheels/*.whl || die "wheel install failed"
    "$py" -m pip install -q --no-index --no-deps --no-build-isolation -e "$ROOT" || die "caffecompat install failed"
    export CAFFECOMPAT_SHARED="$WORK/shared" PYTHONUNBUFFERED=1
    local providers
    # onnxruntime-gpu loads CUDA and cuDNN from the nvidia-* wheels of the image (preload_dlls) when it can.
    providers=$("$py" -c "import onnxruntime as o; getattr(o, 'preload_dlls', lambda: None)(); print(o.__version__, o.get_available_providers())" 2>&1)
    echo "onnxruntime: $providers"
    case "$providers" in *CUDAExecutionProvider*) ;; *) die "the CUDA provider is not available: $providers";; esac

    local golden_rc bench_rc
    # The golden training runs, each recipe with -gpu 0 appended to the flags tests/golden_train.py gives it.
    "$py" - "$ROOT" <<'EOF' 2>&1 | tee "$WORK/golden.log"
import sys

import pytest

sys.path.insert(0, sys.argv[1])
import tests.golden_train as g

for name in g.RUNS:
    g.RUNS[name] = [*g.RUNS[name], "-gpu", "0"]
sys.exit(pytest.main(["-q", "-x", "-p", "no:cacheprovider", f"{sys.argv[1]}/tests/test_train_golden.py"]))
EOF
    golden_rc=${PIPESTATUS[0]}
    # The training benchmarks on the CUDA provider: the Solver gets the providers `train -gpu 0` resolves.
    "$py" - "$ROOT" <<'EOF' 2>&1 | tee "$WORK/bench.log"
import io, json, sys, time, contextlib
sys.path.insert(0, sys.argv[1] + "/benchmarks")
from bench_train import resnet50_net
from bench_peer import caffenet_dummy_net, solver_param
from caffecompat import glog
from caffecompat.commands.common import providers_and_device
from caffecompat.solver.loop import Solver

providers, device = providers_and_device(0, False)  # what `caffecompat train -gpu 0` asks for
print("providers:", providers, device)

glog.set_stream(io.StringIO())
for name, net in (("caffenet", caffenet_dummy_net(32)), ("resnet50", resnet50_net(8))):
    param = solver_param(net, 20)
    with contextlib.redirect_stderr(io.StringIO()):
        solver = Solver(param, "gpu_check solver", providers=providers)
        solver.step(2)
        times = []
        for _ in range(10):
            t0 = time.perf_counter()
            solver.step(1)
            times.append(time.perf_counter() - t0)
        solver.close()
    times.sort()
    print(json.dumps({"net": name, "min_ms": times[0] * 1000, "median_ms": times[len(times) // 2] * 1000}))
EOF
    bench_rc=${PIPESTATUS[0]}
    echo "=== gpu_check summary ==="
    echo "onnxruntime: $providers"
    echo "golden training tests with -gpu 0: $([ "$golden_rc" = 0 ] && echo passed || echo "FAILED (rc $golden_rc)"): $(tail -1 "$WORK/golden.log")"
    if [ "$bench_rc" = 0 ]; then
        grep '^{"net"' "$WORK/bench.log" | sed 's/^/  CUDA training ms\/it: /'
    else
        echo "benchmarks on CUDA: FAILED (rc $bench_rc): $(tail -1 "$WORK/bench.log")"
    fi
    [ "$golden_rc" = 0 ] && [ "$bench_rc" = 0 ]
}

case "${1:-}" in
    prepare) prepare ;;
    stash) stash ;;
    run) run_checks ;;
    *) die "usage: bash benchmarks/gpu_check.sh prepare|stash|run (see the comment at its top)" ;;
esac
