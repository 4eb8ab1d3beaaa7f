#!/usr/bin/env bash
# The shapes example: Caffe's whole workflow with caffecompat, on a small
# generated data set, in about a minute on a laptop CPU.
#
#   examples/shapes/run.sh [WORK_DIR]        (default: examples/shapes/work)
#
# Run it from anywhere. Everything it makes goes to WORK_DIR, which it enters:
# the model definitions (caffecompat/examples/shapes/*.prototxt, the package's
# copy, which `caffecompat example shapes DIR` runs too) are copied there, and
# the paths they contain (train_lmdb, mean.binaryproto, snapshots/...) are
# relative to it, as Caffe resolves paths against the working directory.
# Re-running replaces the previous outputs. Set CAFFECOMPAT to use another
# caffecompat executable, PYTHON another Python (with caffecompat installed).
# SHAPES_TRAIN, SHAPES_VAL and SHAPES_ITERATIONS (2400, 400, 600) make a
# smaller run: fewer images, and both solvers' schedules scaled down.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORK="${1:-$HERE/work}"
CAFFECOMPAT="${CAFFECOMPAT:-caffecompat}"
PYTHON="${PYTHON:-python3}"
TRAIN="${SHAPES_TRAIN:-2400}"
VAL="${SHAPES_VAL:-400}"
ITERATIONS="${SHAPES_ITERATIONS:-600}"

if ! command -v "$CAFFECOMPAT" >/dev/null 2>&1; then
    echo "run.sh: '$CAFFECOMPAT' not found: activate the environment caffecompat is installed in" \
         "(pip install -e .) or set CAFFECOMPAT=/path/to/caffecompat" >&2
    exit 1
fi

if ! "$PYTHON" -c 'import caffecompat.examples.shapes' >/dev/null 2>&1; then
    echo "run.sh: '$PYTHON' cannot import caffecompat: set PYTHON to the Python of the environment" \
         "caffecompat is installed in (PYTHON=.venv/bin/python)" >&2
    exit 1
fi

step() { echo; echo "=== $*"; }
START=$SECONDS

mkdir -p "$WORK"
cd "$WORK"
# Only what this script makes is removed; anything else in WORK_DIR is left alone.
rm -rf images train_lmdb val_lmdb snapshots finetune_snapshots
rm -f mean.binaryproto shapes.onnx labels.txt train.log test.log finetune.log \
      train_val.prototxt deploy.prototxt solver.prototxt finetune_train_val.prototxt finetune_solver.prototxt
mkdir -p snapshots finetune_snapshots
# The five model definitions, copied here first (the solvers rescaled when SHAPES_ITERATIONS or SHAPES_VAL
# is set), so that sizes they cannot take stop the run before it starts.
"$PYTHON" -m caffecompat.examples.shapes.models . --iterations "$ITERATIONS" --val "$VAL"

step "1. Generate the images (images/, images/train.txt, images/val.txt)"
"$PYTHON" -m caffecompat.examples.shapes.make_images images --train "$TRAIN" --val "$VAL" --seed 1
cp images/labels.txt labels.txt

step "2. Convert them to LMDB (convert_imageset)"
"$CAFFECOMPAT" convert-lmdb -resize_height 32 -resize_width 32 -shuffle images/ images/train.txt train_lmdb
"$CAFFECOMPAT" convert-lmdb -resize_height 32 -resize_width 32 images/ images/val.txt val_lmdb

step "3. Compute the mean image (compute_image_mean)"
"$CAFFECOMPAT" compute-mean train_lmdb mean.binaryproto

step "4. Train (caffe train)"
"$CAFFECOMPAT" train -solver solver.prototxt 2>&1 | tee train.log
WEIGHTS="snapshots/shapes_iter_$ITERATIONS.caffemodel"
test -f "$WEIGHTS" || { echo "run.sh: training wrote no $WEIGHTS" >&2; exit 1; }

step "5. Score the trained weights on the validation set (caffe test)"
# Batches of 50: 8 for the 400 validation images.
"$CAFFECOMPAT" test -model train_val.prototxt -weights "$WEIGHTS" -iterations "$((VAL / 50))" 2>&1 | tee test.log

step "6. Fine-tune from those weights with a new last layer (caffe train -weights)"
"$CAFFECOMPAT" train -solver finetune_solver.prototxt -weights "$WEIGHTS" 2>&1 | tee finetune.log

step "7. Export the deploy net with the trained weights to ONNX"
"$CAFFECOMPAT" convert deploy.prototxt "$WEIGHTS" shapes.onnx

step "8. Classify the validation images with shapes.onnx and plain onnxruntime"
"$PYTHON" -m caffecompat.examples.shapes.classify images/val.txt --root images/
"$PYTHON" -m caffecompat.examples.shapes.classify "images/$(head -n 1 images/val.txt | cut -d ' ' -f 1)"

step "Done in $((SECONDS - START)) s. Outputs in $WORK:"
ls -d "$WORK"/snapshots/* "$WORK"/finetune_snapshots/* "$WORK"/shapes.onnx
accuracy() { grep -h "$2" "$1" | tail -n 1 | sed 's/.*accuracy = //'; }
echo "  validation accuracy after training:    $(accuracy train.log 'Test net output #0: accuracy')"
echo "  validation accuracy, caffecompat test: $(accuracy test.log '] accuracy = ')"
echo "  validation accuracy after fine-tuning: $(accuracy finetune.log 'Test net output #0: accuracy')"
