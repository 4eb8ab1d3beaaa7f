"""Data pipeline benchmarks: Data layer batches/s and convert-lmdb images/s.

    python benchmarks/bench_data.py [--records N] [--batches N] [--images N] [--consumer-rate R]

1. A CaffeNet-style Data layer (256 x 256 JPEG-encoded records, crop 227,
   mirror, mean file, batch 64, TRAIN) pulled as fast as possible: batches/s
   with one decode thread and with the default number.
2. The same pipeline against a consumer taking 1/R s per batch (a stand-in for
   the training step, which does not exist yet): the pipeline/consumer rate
   ratio and the share of the consumer's time spent waiting for data. Pass the
   measured training rate with --consumer-rate, or call
   `compare_with_consumer(rate)` from the training benchmark.
3. convert-lmdb on 400 x 300 JPEG files (resize to 256 x 256, JPEG-encoded)
   with 1 worker and with all cores: images/s and the speed-up.

Everything is generated in a temporary folder and deleted afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import lmdb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from caffecompat import glog  # noqa: E402
from caffecompat.data import datum as codec  # noqa: E402
from caffecompat.data.convert_imageset import Options, convert_imageset  # noqa: E402
from caffecompat.data.data_layer import DECODE_THREADS, DataLayerSource  # noqa: E402
from caffecompat.data.image_mean import write_mean  # noqa: E402
from caffecompat.proto import caffe_pb2  # noqa: E402


def synthetic_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth colour image with some noise, so JPEG sizes are photo-like."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    a, b, c = rng.uniform(0.01, 0.08, 3)
    base = np.stack([np.sin(a * x + b * y), np.cos(b * x - c * y), np.sin(c * (x + y))], axis=-1)
    img = 127 + 100 * base + rng.normal(0, 12, size=(h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_jpeg_db(folder: Path, n: int) -> tuple[Path, Path]:
    """An LMDB of n JPEG-encoded 256 x 256 records and its mean file."""
    rng = np.random.default_rng(0)
    db = folder / "bench_lmdb"
    env = lmdb.open(str(db), map_size=1 << 30)
    total = np.zeros((3, 256, 256), np.float64)
    with env.begin(write=True) as txn:
        for i in range(n):
            img = synthetic_image(rng, 256, 256)
            total += img.transpose(2, 0, 1)
            data = cv2.imencode(".jpg", img)[1].tobytes()
            txn.put(f"{i:08d}_img{i}.jpg".encode(), codec.from_encoded(data, i % 1000).SerializeToString())
    env.close()
    mean = folder / "mean.binaryproto"
    write_mean(str(mean), (total / n).astype(np.float32)[None])
    return db, mean


def caffenet_layer(db: Path, mean: Path, batch: int = 64) -> caffe_pb2.LayerParameter:
    lp = caffe_pb2.LayerParameter(name="data", type="Data", top=["data", "label"])
    lp.data_param.source = str(db)
    lp.data_param.batch_size = batch
    lp.data_param.backend = caffe_pb2.DataParameter.LMDB
    lp.transform_param.crop_size = 227
    lp.transform_param.mirror = True
    lp.transform_param.mean_file = str(mean)
    return lp


def pipeline_rate(lp: caffe_pb2.LayerParameter, batches: int, threads: int = DECODE_THREADS) -> float:
    """Batches/s of the Data layer when the consumer never makes it wait longer than needed."""
    src = DataLayerSource(lp, caffe_pb2.TRAIN, np.random.default_rng(0), threads=threads)
    try:
        src.next_batch()  # warm up: thread start, first decode
        start = time.perf_counter()
        for _ in range(batches):
            src.next_batch()
        return batches / (time.perf_counter() - start)
    finally:
        src.close()


def compare_with_consumer(lp: caffe_pb2.LayerParameter, consumer_rate: float, batches: int) -> dict[str, float]:
    """Feed a consumer that needs 1/consumer_rate s per batch; report the rates and its time waiting.

    The consumer here sleeps, leaving the cores to the loader; a real training
    step computes, so on few cores the loader will be slower than measured.
    """
    src = DataLayerSource(lp, caffe_pb2.TRAIN, np.random.default_rng(0))
    step = 1.0 / consumer_rate
    waited = 0.0
    try:
        src.next_batch()
        time.sleep(step)
        start = time.perf_counter()
        for _ in range(batches):
            t = time.perf_counter()
            src.next_batch()
            waited += time.perf_counter() - t
            time.sleep(step)
        elapsed = time.perf_counter() - start
    finally:
        src.close()
    return {"consumer_rate": consumer_rate, "achieved_rate": batches / elapsed, "wait_share": waited / elapsed}


def make_jpeg_files(folder: Path, n: int) -> Path:
    rng = np.random.default_rng(1)
    (folder / "img").mkdir()
    lines = []
    for i in range(n):
        cv2.imwrite(str(folder / "img" / f"{i}.jpg"), synthetic_image(rng, 300, 400))
        lines.append(f"img/{i}.jpg {i % 10}")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return folder / "list.txt"


def convert_rate(folder: Path, list_file: Path, workers: int, name: str) -> float:
    opts = Options(resize_height=256, resize_width=256, encode_type="jpg", encoded=True, workers=workers)
    start = time.perf_counter()
    result = convert_imageset(f"{folder}/", str(list_file), str(folder / name), opts, progress=False)
    return result.count / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=192, help="JPEG records in the benchmark LMDB")
    ap.add_argument("--batches", type=int, default=8, help="batches of 64 timed per measurement")
    ap.add_argument("--images", type=int, default=200, help="image files converted by convert-lmdb")
    ap.add_argument("--consumer-rate", type=float, default=0.0,
                    help="training batches/s to compare with (default: half the pipeline rate)")
    args = ap.parse_args()
    glog.set_stream(io.StringIO())  # keep the benchmark output to the numbers
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        db, mean = make_jpeg_db(folder, args.records)
        lp = caffenet_layer(db, mean)
        # Alternate the settings and keep each one's best run: the machine may be shared.
        runs = [(t, pipeline_rate(lp, args.batches, threads=t)) for _ in range(3) for t in (1, DECODE_THREADS)]
        one = max(r for t, r in runs if t == 1)
        many = max(r for t, r in runs if t == DECODE_THREADS)
        print(f"Data layer, 256x256 JPEG, crop 227, mirror, mean file, batch 64 ({cores} cores):")
        print(f"  1 decode thread:  {one:6.2f} batches/s ({one * 64:7.1f} images/s)")
        print(f"  {DECODE_THREADS} decode threads: {many:6.2f} batches/s ({many * 64:7.1f} images/s)"
              f"  speed-up x{many / one:.2f}")
        rate = args.consumer_rate or many / 2
        r = compare_with_consumer(lp, rate, args.batches)
        print(f"  vs a consumer at {rate:.2f} batches/s: pipeline/consumer = {many / rate:.2f}, "
              f"achieved {r['achieved_rate']:.2f} batches/s, consumer waiting {100 * r['wait_share']:.1f}%"
              + ("" if args.consumer_rate else "  (no training rate given: --consumer-rate)"))
        list_file = make_jpeg_files(folder, args.images)
        with contextlib.redirect_stderr(io.StringIO()):
            # Alternate the two settings and keep each one's best run: the machine may be shared.
            runs = [(w, convert_rate(folder, list_file, w, f"db{k}_{w}")) for k in range(2) for w in (1, cores)]
        c1 = max(r for w, r in runs if w == 1)
        cn = max(r for w, r in runs if w == cores)
        print(f"convert-lmdb, 400x300 JPEG -> 256x256 JPEG-encoded ({args.images} images):")
        print(f"  1 worker:  {c1:7.1f} images/s")
        print(f"  {cores} workers: {cn:7.1f} images/s  speed-up x{cn / c1:.2f}")


if __name__ == "__main__":
    main()
