#!/usr/bin/env bash
# Transfer learning end to end on a real pretrained model: Yahoo's open_nsfw
# (ResNet-50-1by2, trained weights) fine-tuned to classify drawn shapes, in a
# few minutes on a laptop CPU.
#
#   examples/finetune_nsfw/run.sh [WORK_DIR]        (default: examples/finetune_nsfw/work)
#
# It needs the model's deploy.prototxt and resnet_50_1by2_nsfw.caffemodel in
# OPEN_NSFW (default: ../shared/zoo/open_nsfw beside this checkout); without
# them it says so and stops, doing nothing. Everything it makes goes to
# WORK_DIR; re-running replaces the previous outputs. Set CAFFECOMPAT to use
# another caffecompat executable, PYTHON another Python (default: the one
# installed beside caffecompat), SEED another data set and solver seed.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
OPEN_NSFW="${OPEN_NSFW:-$REPO/../shared/zoo/open_nsfw}"
WORK="${1:-$HERE/work}"
CAFFECOMPAT="${CAFFECOMPAT:-caffecompat}"
SEED="${SEED:-1}"

if ! command -v "$CAFFECOMPAT" >/dev/null 2>&1; then
    echo "run.sh: '$CAFFECOMPAT' not found: activate the environment caffecompat is installed in" \
         "(pip install -e .) or set CAFFECOMPAT=/path/to/caffecompat" >&2
    exit 1
fi
BESIDE="$(dirname "$(command -v "$CAFFECOMPAT")")/python"
PYTHON="${PYTHON:-$([ -x "$BESIDE" ] && echo "$BESIDE" || echo python3)}"
DEPLOY="$OPEN_NSFW/deploy.prototxt"
WEIGHTS="$OPEN_NSFW/resnet_50_1by2_nsfw.caffemodel"
if [ ! -f "$DEPLOY" ] || [ ! -f "$WEIGHTS" ]; then
    echo "run.sh: skipped: open_nsfw is not in $OPEN_NSFW (it needs deploy.prototxt and" \
         "resnet_50_1by2_nsfw.caffemodel from github.com/yahoo/open_nsfw, models/; set OPEN_NSFW=FOLDER)"
    exit 0
fi

step() { echo; echo "=== $*"; }
START=$SECONDS

# The recipe, the same for the fine-tuned and the from-scratch runs. The net wants 224 x 224 images, so the
# batch is tiny and everything up to relu_stage3_block1 is frozen: only the last residual block and the new
# head learn. Adam with the exp policy: the rate is base_lr * gamma^iteration, 0.95^40 = 0.13 at the end.
ITERATIONS=40
FIRST_SESSION=20
RECIPE=(-freeze_below relu_stage3_block1 -solver_type Adam -base_lr 0.0003 -lr_policy exp -gamma 0.95
        -batch 4 -mean_value 104,117,123 -seed "$SEED")
# Data parallel on 2 processes (each its own batch of 4, as Caffe's multi-GPU training), where MPI is installed.
PARALLEL=(-processes 2)
if ! "$PYTHON" -c "import mpi4py; from caffecompat.parallel.launch import find_mpiexec; find_mpiexec()" \
        >/dev/null 2>&1; then
    echo "run.sh: mpi4py or mpiexec is missing (pip install 'caffecompat[mpi]'): training on 1 process"
    PARALLEL=()
fi

mkdir -p "$WORK"
cd "$WORK"
# Only what this script makes is removed; anything else in WORK_DIR is left alone.
rm -rf images finetuned scratch
rm -f finetune.log resume.log scratch.log classify.log classify_scratch.log test.h5 test_scratch.h5 curves.png

step "1. Generate the images: images/{train,val,test}/<class>/ (examples/shapes' drawings, 64 x 64)"
# make_images.py writes train/ and val/ with list files; a second call, another seed, gives the test images.
# Moving each image into the folder of its class makes the image folders a user has of their own photos.
"$PYTHON" "$REPO/examples/shapes/make_images.py" images --train 64 --val 32 --size 64 --seed "$SEED"
"$PYTHON" "$REPO/examples/shapes/make_images.py" images/unseen --train 0 --val 40 --size 64 --seed "$((SEED + 1000))"
mv images/unseen/val images/test
rm -rf images/unseen images/train.txt images/val.txt images/labels.txt
for split in train val test; do
    for f in images/"$split"/*.png; do
        name="${f##*/}"
        mkdir -p "images/$split/${name%%_*}"
        mv "$f" "images/$split/${name%%_*}/"
    done
done

step "2. Fine-tune open_nsfw, first session: $FIRST_SESSION of $ITERATIONS iterations (caffecompat finetune)"
"$CAFFECOMPAT" finetune -model "$DEPLOY" -weights "$WEIGHTS" -train images/train -val images/val \
    -output finetuned -iterations "$FIRST_SESSION" "${RECIPE[@]}" ${PARALLEL[@]+"${PARALLEL[@]}"} 2>&1 | tee finetune.log

step "3. Resume from the snapshot to iteration $ITERATIONS (caffe train -snapshot)"
# The session ended at max_iter with a snapshot; raise max_iter, as a Caffe user edits the solver, and go on.
sed -i.bak "s/^max_iter: $FIRST_SESSION\$/max_iter: $ITERATIONS/" finetuned/solver.prototxt
"$CAFFECOMPAT" train -solver finetuned/solver.prototxt \
    -snapshot "finetuned/snapshots/finetune_iter_$FIRST_SESSION.solverstate" \
    ${PARALLEL[@]+"${PARALLEL[@]}"} 2>&1 | tee resume.log
FINETUNED="finetuned/snapshots/finetune_iter_$ITERATIONS.caffemodel"
test -f "$FINETUNED" || { echo "run.sh: the resumed training wrote no $FINETUNED" >&2; exit 1; }

step "4. The same recipe from the fillers, no pretrained weights: $ITERATIONS iterations (finetune -noweights)"
"$CAFFECOMPAT" finetune -model "$DEPLOY" -noweights -train images/train -val images/val \
    -output scratch -iterations "$ITERATIONS" "${RECIPE[@]}" ${PARALLEL[@]+"${PARALLEL[@]}"} 2>&1 | tee scratch.log

step "5. Plot the curves (caffecompat plot)"
if "$PYTHON" -c "import matplotlib" >/dev/null 2>&1; then
    "$CAFFECOMPAT" plot finetune.log resume.log scratch.log -o curves.png -title "open_nsfw fine-tuned vs from scratch"
else
    echo "run.sh: matplotlib is missing (pip install 'caffecompat[dev]'): no curves.png"
fi

step "6. Classify the unseen test images with the fine-tuned net, as HDF5 (caffecompat classify -format hdf5)"
# The preprocessing of the TEST Data layer: resized to the stored 256 x 256, centre crop 224, the same means.
CLASSIFY=(-mean_value 104,117,123 -images_dim 256,256 -labels finetuned/labels.txt -format hdf5)
"$CAFFECOMPAT" classify -model finetuned/deploy.prototxt -weights "$FINETUNED" "${CLASSIFY[@]}" \
    -output test.h5 ${PARALLEL[@]+"${PARALLEL[@]}"} images/test 2>&1 | tee classify.log
"$CAFFECOMPAT" classify -model scratch/deploy.prototxt -weights "scratch/snapshots/finetune_iter_$ITERATIONS.caffemodel" \
    "${CLASSIFY[@]}" -output test_scratch.h5 images/test 2>&1 | tee classify_scratch.log

step "7. Per-sample accuracy from the HDF5 file (examples/classify/print_predictions.py)"
"$PYTHON" "$REPO/examples/classify/print_predictions.py" test.h5 | tee predictions.txt | tail -n 5

accuracy() { grep -h "$2" "$1" | tail -n 1 | sed 's/.*accuracy = \([^ ]*\).*/\1/'; }
FT=$(accuracy classify.log '] accuracy = ')
SCRATCH=$(accuracy classify_scratch.log '] accuracy = ')
step "Done in $((SECONDS - START)) s. Outputs in $WORK:"
echo "  resumed:                              $(grep -h 'Restoring previous solver status' resume.log | head -n 1 | sed 's/.*\] //'), first iteration $(grep -h -m 1 -o 'Iteration [0-9]*, lr' resume.log | grep -o '[0-9]*')"
echo "  validation accuracy, first session:   $(accuracy finetune.log 'Test net output #0: accuracy')"
echo "  validation accuracy after resuming:   $(accuracy resume.log 'Test net output #0: accuracy')"
echo "  test accuracy, classify:              $FT"
echo "  test accuracy, per sample from HDF5:  $(accuracy predictions.txt 'accuracy = ')"
echo "  test accuracy from scratch:           $SCRATCH"
"$PYTHON" -c "import sys; ft, sc = map(float, sys.argv[1:]); print(f'  fine-tuned {ft:.4g} against from scratch {sc:.4g}: margin {ft - sc:+.4g}, chance 0.25')" "$FT" "$SCRATCH"
