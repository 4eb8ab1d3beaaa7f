#!/usr/bin/env bash
# The pycaffe examples, in order, in WORK_DIR (default examples/pycaffe/work): write the nets with NetSpec,
# train from Python with SGDSolver (a Python data layer feeds it), fine-tune from that snapshot, classify new
# images with caffe.Classifier, and compare a Python loss layer with the built-in one. About a minute.
#
#   examples/pycaffe/run.sh [WORK_DIR] [ITERATIONS]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORK="${1:-$HERE/work}"
ITERS="${2:-300}"
PYTHON="${PYTHON:-python3}"
export GLOG_minloglevel="${GLOG_minloglevel:-1}"  # Caffe's log at warnings and above (0 shows the nets being built)
"$PYTHON" "$HERE/netspec.py" "$WORK" --iters "$ITERS"
cd "$WORK"
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"  # the Python layers' module, as Caffe users set it
"$PYTHON" "$HERE/finetune.py" --iters "$ITERS"
mv "shapes_py_iter_$ITERS.caffemodel" pretrained.caffemodel
"$PYTHON" "$HERE/finetune.py" --iters "$((ITERS / 3 + 1))" --weights pretrained.caffemodel
"$PYTHON" "$HERE/classify.py" "shapes_py_iter_$((ITERS / 3 + 1)).caffemodel"
"$PYTHON" "$HERE/python_loss.py" "$WORK"
