"""Fine-tuning speed on the real ResNet: the backbone frozen against every layer trained.

    python benchmarks/bench_finetune.py [--batch 16] [--iterations 6] [--freeze_below relu_stage3_block1]

Runs `caffecompat finetune` twice on ../shared/zoo/open_nsfw (ResNet-50-1by2,
its trained weights) with generated images (the shapes example's drawings,
3 classes): once with `-freeze_below` the input of the last residual block
(only that block and the new head learn; Net::Init skips the backward below
it), once with nothing frozen. Each run's ms/iteration is the mean of the
solver's per-iteration display lines after the first (warm-up) one; the
ratio full / frozen is printed from the same run. Earlier measurement on
this 2-core machine at batch 16: 0.75 s frozen vs 1.77 s full.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import re
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL = ROOT.parent / "shared" / "zoo" / "open_nsfw"
_ITERATION = re.compile(r"Iteration (\d+) \([\d.]+ iter/s, ([\d.]+)s/(\d+) iters\)")


def _images(folder: Path, per_class: int) -> None:
    spec = importlib.util.spec_from_file_location("shapes_make_images", ROOT / "examples/shapes/make_images.py")
    shapes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shapes)
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for label, name in enumerate(shapes.CLASSES[:3]):
            (folder / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                cv2.imwrite(str(folder / split / name / f"{i}.png"), shapes.draw_shape(label, 64, rng))


def _run(work: Path, name: str, batch: int, iterations: int, freeze: str) -> tuple[float, float]:
    """(mean seconds per iteration after the first, wall seconds of the whole command)."""
    from caffecompat import glog
    from caffecompat.cli import main

    args = ["finetune", "-model", str(MODEL / "deploy.prototxt"), "-weights",
            str(MODEL / "resnet_50_1by2_nsfw.caffemodel"), "-train", str(work / "train"), "-val",
            str(work / "val"), "-output", str(work / name), "-iterations", str(iterations), "-batch", str(batch),
            "-mean_value", "104,117,123"]
    if freeze:
        args += ["-freeze_below", freeze]
    stream = io.StringIO()
    glog.set_stream(stream)
    t0 = time.perf_counter()
    try:
        status = main(args)
    finally:
        glog.set_stream(None)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"bench_finetune: {name} failed:\n{stream.getvalue()[-3000:]}")
    # With display 1 each line times one iteration; iteration 0's line includes the first batches' warm-up.
    times = [float(s) / int(k) for it, s, k in _ITERATION.findall(stream.getvalue()) if int(it) > 1]
    return float(np.mean(times)), wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=6, help="iterations per run (display every one)")
    parser.add_argument("--freeze_below", default="relu_stage3_block1",
                        help="the frozen run's cut (default: the input of the last residual block)")
    args = parser.parse_args()
    if not MODEL.is_dir():
        print(f"bench_finetune: {MODEL} not found (../shared beside the checkout)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # One test batch and enough images for every training batch to differ.
        _images(work, max(2, args.batch // 3 + 1))
        frozen, frozen_wall = _run(work, "frozen", args.batch, args.iterations, args.freeze_below)
        full, full_wall = _run(work, "full", args.batch, args.iterations, "")
    print(f"open_nsfw ResNet-50-1by2, batch {args.batch}, {args.iterations} iterations per run:")
    print(f"  frozen below {args.freeze_below}: {frozen * 1000:8.0f} ms/iteration  (command {frozen_wall:.1f} s)")
    print(f"  full fine-tuning:             {full * 1000:8.0f} ms/iteration  (command {full_wall:.1f} s)")
    print(f"  full / frozen: {full / frozen:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
