"""pycaffe's draw: a diagram of a NetParameter (layers as boxes, blobs as octagons), through pydot.

    from caffecompat import draw
    from caffecompat.formats.net import read_net_prototxt
    draw.draw_net_to_file(read_net_prototxt("train_val.prototxt"), "net.png", "LR")

or from the shell, as Caffe's python/draw_net.py:

    python -m caffecompat.draw train_val.prototxt net.png --rankdir TB --phase TRAIN

The graph is built with pydot (`pip install 'caffecompat[draw]'`); writing an
image (png, svg, pdf, ...) runs Graphviz's `dot` program (apt-get install
graphviz, brew install graphviz); `.dot` files are written without it. The
labels and colors are pycaffe's: convolutions red, pooling orange, inner
products purple, in-place layers green, and edges labelled with batch sizes
and output counts.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from caffecompat.errors import CaffeCompatError
from caffecompat.proto import caffe_pb2

LAYER_STYLE_DEFAULT = {"shape": "record", "fillcolor": "#6495ED", "style": "filled"}
NEURON_LAYER_STYLE = {"shape": "record", "fillcolor": "#90EE90", "style": "filled"}
BLOB_STYLE = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}
_COLORS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900", "InnerProduct": "#CC33FF"}


def _pydot() -> Any:
    try:
        import pydot
    except ImportError:
        raise CaffeCompatError("caffecompat.draw needs pydot: pip install 'caffecompat[draw]' (and Graphviz's dot "
                               "program to write images: apt-get install graphviz, or brew install graphviz)") from None
    return pydot


def get_pooling_types_dict() -> dict[int, str]:
    """Pooling method number -> name (MAX, AVE, STOCHASTIC)."""
    return {v.number: k for k, v in caffe_pb2.PoolingParameter.PoolMethod.DESCRIPTOR.values_by_name.items()}


def get_edge_label(layer: caffe_pb2.LayerParameter) -> str:
    """A top edge's label: the batch size of a Data layer, the output count of convolutions and inner products."""
    if layer.type == "Data":
        return f"Batch {layer.data_param.batch_size}"
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return '""'


def get_layer_lr_mult(layer: caffe_pb2.LayerParameter) -> tuple[float, float]:
    """The lr_mult of the weights and the bias of a Convolution, Deconvolution or InnerProduct layer."""
    if layer.type not in ("Convolution", "Deconvolution", "InnerProduct"):
        raise ValueError(f"{layer.type} layers do not have a learning rate multiplier")
    mults = [p.lr_mult for p in layer.param]
    if len(mults) > 2:
        raise ValueError("Could not parse the learning rate multiplier")
    return tuple(mults + [1.0] * (2 - len(mults)))


def get_layer_label(layer: caffe_pb2.LayerParameter, rankdir: str, display_lrm: bool = False) -> str:
    """A layer node's label: name, (type), kernel/stride/pad of convolutions and pooling, optionally lr mults."""
    separator = " " if rankdir in ("TB", "BT") else r"\n"
    if layer.type == "Pooling":
        parts = [layer.name, f"({layer.type} {get_pooling_types_dict()[layer.pooling_param.pool]})"]
    else:
        parts = [layer.name, f"({layer.type})"]
    if layer.type in ("Convolution", "Deconvolution", "Pooling"):
        if layer.type == "Pooling":
            p = layer.pooling_param
            kernel, stride, pad = p.kernel_size, p.stride, p.pad
        else:
            c = layer.convolution_param
            kernel = c.kernel_size[0] if len(c.kernel_size) else 1
            stride = c.stride[0] if len(c.stride) else 1
            pad = c.pad[0] if len(c.pad) else 0
        parts.append(separator.join([f"kernel size: {kernel}", f"stride: {stride}", f"pad: {pad}"]))
    if display_lrm and layer.type in ("Convolution", "Deconvolution", "InnerProduct"):
        weights, bias = get_layer_lr_mult(layer)
        if weights or bias:
            parts.append(f"lr mult: {weights:.1f}, {bias:.1f}")
    return '"' + separator.join(parts) + '"'


def choose_color_by_layertype(layertype: str) -> str:
    """The fill color of a layer node."""
    return _COLORS.get(layertype, LAYER_STYLE_DEFAULT["fillcolor"])


def _in_phase(layer: caffe_pb2.LayerParameter, phase: int | None) -> bool:
    # pycaffe's drawing looks at the phase of include/exclude rules only (not levels or stages).
    if phase is None:
        return True
    if layer.include and layer.exclude:
        raise ValueError(f"layer {layer.name} has both include and exclude specified.")
    included = not layer.include or any(rule.phase == phase for rule in layer.include)
    return included and not any(rule.phase == phase for rule in layer.exclude)


def get_pydot_graph(caffe_net: caffe_pb2.NetParameter, rankdir: str, label_edges: bool = True,
                    phase: int | None = None, display_lrm: bool = False) -> Any:
    """The pydot.Dot graph of the net's layers (of `phase` only, when given)."""
    pydot = _pydot()
    graph = pydot.Dot(caffe_net.name or "Net", graph_type="digraph", rankdir=rankdir)
    nodes: dict[str, Any] = {}
    edges: list[tuple[str, str, str]] = []
    for layer in caffe_net.layer:
        if not _in_phase(layer, phase):
            continue
        label = get_layer_label(layer, rankdir, display_lrm=display_lrm)
        name = f"{layer.name}_{layer.type}"
        in_place = len(layer.bottom) == 1 and len(layer.top) == 1 and layer.bottom[0] == layer.top[0]
        style = NEURON_LAYER_STYLE if in_place else {**LAYER_STYLE_DEFAULT,
                                                     "fillcolor": choose_color_by_layertype(layer.type)}
        nodes[name] = pydot.Node(label, **style)
        for bottom in layer.bottom:
            nodes[bottom + "_blob"] = pydot.Node(bottom, **BLOB_STYLE)
            edges.append((bottom + "_blob", name, '""'))
        for top in layer.top:
            nodes[top + "_blob"] = pydot.Node(top)
            edges.append((name, top + "_blob", get_edge_label(layer) if label_edges else '""'))
    for node in nodes.values():
        graph.add_node(node)
    for src, dst, label in edges:
        graph.add_edge(pydot.Edge(nodes[src], nodes[dst], label=label))
    return graph


def draw_net(caffe_net: caffe_pb2.NetParameter, rankdir: str = "LR", ext: str = "png", phase: int | None = None,
             display_lrm: bool = False) -> bytes:
    """The diagram as `ext` (png, svg, pdf, ... through Graphviz's dot; "dot" gives the DOT source)."""
    graph = get_pydot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm)
    if ext in ("dot", "gv", "raw"):
        return graph.to_string().encode()
    try:
        return graph.create(format=ext)
    except FileNotFoundError:
        raise CaffeCompatError(f"drawing a .{ext} needs Graphviz's dot program (apt-get install graphviz, or brew "
                               "install graphviz); a .dot file needs only pydot") from None


def draw_net_to_file(caffe_net: caffe_pb2.NetParameter, filename: str, rankdir: str = "LR",
                     phase: int | None = None, display_lrm: bool = False) -> None:
    """Write the diagram to `filename`, in the format its extension names."""
    ext = filename[filename.rfind(".") + 1:]
    data = draw_net(caffe_net, rankdir, ext, phase, display_lrm)
    with open(filename, "wb") as f:
        f.write(data)


def main(argv: list[str] | None = None) -> int:
    """python -m caffecompat.draw NET.prototxt OUT.png [--rankdir LR] [--phase ALL|TRAIN|TEST] [--display_lrm]."""
    parser = argparse.ArgumentParser(description="Draw a net prototxt (Caffe's draw_net.py).")
    parser.add_argument("input_net_proto_file", help="the net prototxt")
    parser.add_argument("output_image_file", help="the image to write (its extension gives the format)")
    parser.add_argument("--rankdir", default="LR", help="LR, TB, BT or RL (default LR)")
    parser.add_argument("--phase", default="ALL", choices=["ALL", "TRAIN", "TEST"],
                        help="draw the layers of this phase only (default ALL)")
    parser.add_argument("--display_lrm", action="store_true", help="show learning rate multipliers")
    args = parser.parse_args(argv)
    from caffecompat.formats.net import read_net_prototxt

    try:
        net = read_net_prototxt(args.input_net_proto_file)
        phase = {"ALL": None, "TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST}[args.phase]
        print(f"Drawing net to {args.output_image_file}")
        draw_net_to_file(net, args.output_image_file, args.rankdir, phase, args.display_lrm)
    except CaffeCompatError as e:
        print(f"caffecompat.draw: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
