"""`caffecompat convert DEPLOY WEIGHTS OUT`: a Caffe deploy net and its weights as a standalone ONNX model."""

from __future__ import annotations

import argparse
import sys

from caffecompat import convert as conv
from caffecompat import outfiles
from caffecompat.commands.common import add_proto_flag, flag, stages
from caffecompat.errors import CaffeCompatError
from caffecompat.net.export import DEFAULT_OPSET, MAX_OPSET

_DESCRIPTION = f"""\
Convert a Caffe deploy net (DEPLOY.prototxt) and its trained weights
(WEIGHTS.caffemodel) into one standalone ONNX model (OUT.onnx) that computes
what Caffe's forward pass computes in the TEST phase.

The net must be a deploy net: its inputs are Input layers or the legacy
input/input_dim/input_shape fields (old V0/V1 nets and caffemodels are
upgraded in memory, as Caffe does). A net with data layers (Data, ImageData,
HDF5Data, ...) is refused: give the deploy version of the net.

Names: the ONNX graph inputs are the net's input blobs, with their prototxt
shapes (fixed, batch included). Deploy files often give placeholder sizes
("1x3x1x1, defined at runtime"): -input_shape NAME:N,C,H,W sets the shape of
input NAME (repeat it for several inputs) before the net is resolved, and
-dynamic_batch leaves axis 0 of the inputs and outputs open (a symbolic N),
for nets whose layers do not fix the batch size (those that do are named in
a `not supported` error). The outputs are Caffe's net outputs (blobs no
layer consumes, in name order), each named after its Caffe blob. A blob that
in-place layers rewrite (e.g. conv1 followed by ReLU in place) is output under
its Caffe name holding its last value, as Caffe's blob holds after Forward.
-keep_blobs adds every blob of the net as an output (Caffe's automatic
`<blob>_<layer>_<i>_split_<j>` copies included); -outputs adds the named blobs.
Input blobs are graph inputs and are never repeated as outputs; when a layer
rewrites an input blob in place, the input keeps the blob's name and the
rewritten value is output as `<blob>@<last layer writing it>`.

Weights: layers are matched by name as Caffe's Net::CopyTrainedLayersFrom does
(weights-file layers the net lacks are ignored, with a note). WEIGHTS `-`
means no weights file: every parameter comes from its filler, seeded by
-seed (for testing). Net layers with parameters that the weights file lacks
also keep their filler values; a warning names them.

Opset: -opset N picks the ONNX opset (default {DEFAULT_OPSET}, from 7 to {MAX_OPSET}, what
ONNX Runtime 1.19 takes). A layer whose lowering needs a newer opset is
reported, as is any model that onnx.checker (full check) rejects.

Output: OUT is written atomically (a temporary file renamed at the end), the
weights streamed from memory into it (peak memory stays near the caffemodel's
size).
Models over protobuf's 2 GB limit are saved with ONNX external data: the
tensors go to OUT.data beside OUT (keep the two files together);
-external_data forces that layout for any size. A one-line summary
(inputs and shapes, outputs, opset, size) goes to stdout.
"""


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `convert` subcommand."""
    p = sub.add_parser("convert", help="convert a deploy prototxt + caffemodel to a standalone ONNX model",
                       description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("deploy", metavar="DEPLOY.prototxt", help="the deploy net definition (Input layers)")
    p.add_argument("weights", metavar="WEIGHTS.caffemodel",
                   help="the trained weights; `-` for filler-initialized weights (see -seed)")
    p.add_argument("output", metavar="OUT.onnx", help="the ONNX model to write")
    flag(p, "opset", type=int, default=DEFAULT_OPSET, metavar="N",
         help=f"ONNX opset version, 7 to {MAX_OPSET} (default {DEFAULT_OPSET})")
    p.add_argument("-keep_blobs", "--keep_blobs", "--keep-blobs", dest="keep_blobs", action="store_true",
                   help="output every blob of the net too (intermediate values under their Caffe names)")
    flag(p, "outputs", default="", metavar="BLOBS",
         help="comma-separated blobs to output besides the net's outputs, e.g. conv1,pool5")
    flag(p, "level", type=int, default=0, help="the net's level for include/exclude rules (default 0)")
    flag(p, "stage", default="", metavar="STAGES", help="comma-separated stages for include/exclude rules")
    flag(p, "seed", type=int, default=0, metavar="N",
         help="random seed of the fillers when WEIGHTS is `-` (default 0)")
    p.add_argument("-external_data", "--external_data", "--external-data", dest="external_data",
                   action="store_true", help="store tensors in OUT.data beside OUT (automatic over 2 GB)")
    p.add_argument("-input_shape", "--input_shape", "--input-shape", dest="input_shape", action="append",
                   default=[], metavar="NAME:N,C,H,W",
                   help="the shape of input blob NAME, replacing the prototxt's (repeat for each input; "
                        "NAME may be left out when the net has one input)")
    p.add_argument("-dynamic_batch", "--dynamic_batch", "--dynamic-batch", dest="dynamic_batch",
                   action="store_true", help="leave the batch axis (axis 0) of the inputs and outputs open: "
                                             "a symbolic size N, any batch at run time")
    add_proto_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Convert and write the model."""
    weights = None if args.weights == "-" else args.weights
    outputs = [s for s in (x.strip() for x in args.outputs.split(",")) if s]
    if args.output == "-":
        raise CaffeCompatError("OUT: give a file name; the model is not written to stdout")
    # Before the conversion, which for a large net takes a while.
    outfiles.check_writable(args.output, "model")
    shapes: dict[str, tuple[int, ...]] = {}
    for text in args.input_shape:
        name, dims = conv.parse_input_shape(text)
        if name in shapes:
            raise CaffeCompatError(f"-input_shape {text}: {name or 'the input'} is shaped twice; give it once")
        shapes[name] = dims
    result = conv.convert_net(args.deploy, weights, opset=args.opset, keep_blobs=args.keep_blobs,
                              outputs=outputs, level=args.level, stages=stages(args.stage), seed=args.seed,
                              input_shapes=shapes, dynamic_batch=args.dynamic_batch)
    files = result.save(args.output, external_data=args.external_data or None)
    prog = f"caffecompat {args.command}"
    if result.ignored_layers:
        print(f"{prog}: note: ignored {len(result.ignored_layers)} layer(s) of {args.weights} that the net "
              f"lacks: {', '.join(result.ignored_layers)}", file=sys.stderr)
    if result.filled_layers:
        print(f"{prog}: warning: {args.weights} has no weights for layer(s) {', '.join(result.filled_layers)}; "
              "they keep their filler values", file=sys.stderr)
    size = sum(f.stat().st_size for f in files)
    inputs = ", ".join(f"{n}[{'x'.join(map(str, s))}]" for n, s in result.inputs.items()) or "none"
    outs = result.outputs
    shown = ", ".join(outs) if len(outs) <= 8 else ", ".join(outs[:8]) + f", ... ({len(outs)} in all)"
    where = f"{files[0]} (+ {files[1].name})" if len(files) > 1 else str(files[0])
    print(f"Wrote {where}: inputs {inputs}; outputs {shown}; opset {args.opset}; {_human(size)}")
    return 0


def _human(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"
