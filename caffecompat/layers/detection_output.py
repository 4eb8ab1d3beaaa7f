"""DetectionOutput (SSD's detection_output_layer.cpp): decoded boxes, per-class NMS and top-k, for inference.

Bottoms: location predictions (N x P*L*4, L = 1 with share_location, else
num_classes), confidences (N x P*num_classes, already softmaxed) and the priors
(1 x 2 x P*4: boxes, then variances). Per image and per class other than
background_label_id, as SSD's ApplyNMSFast: the boxes scoring above
confidence_threshold, the nms_param.top_k best of them (stable order), then
greedy NMS keeping a box whose Jaccard overlap with every kept box is at most
nms_threshold. Per image, keep_top_k keeps the best-scoring detections over
all classes. The top is 1 x 1 x D x 7, rows (image, label, score, xmin, ymin,
xmax, ymax) ordered by image, label, then score (descending); with no
detection at all, one row per image (image, -1, -1, -1, -1, -1, -1).

D depends on the data: NetSpec sees SSD's setup shape 1 x 1 x 1 x 7 and the
ONNX output declares D symbolic. In ONNX: the boxes are decoded with the
priors' variances by code_type, TopK takes the top_k candidates, and
NonMaxSuppression (same order, ties to the lower index, strict IoU > threshold
to suppress, strict score > threshold) runs per image and class. SSD counts a
box with xmax < xmin or ymax < ymin as overlapping nothing; NonMaxSuppression
would reorder its corners, so such a box is given to it collapsed to a point.
Adaptive NMS (nms_param.eta < 1: after each kept box the threshold, while above
0.5, is multiplied by eta) has no ONNX operator: a Loop over the candidates
keeps box i when no kept box overlaps it by more than the current threshold
(over the longest run of candidates above confidence_threshold; box i's overlaps
are made inside the loop, so memory grows with the candidates, not their square).
OpenCV's `clip` clips the decoded boxes to [0, 1] before NMS (its
DecodeBBox with clip_bbox). Needs opset 11. There is no Backward (the fork's is
NOT_IMPLEMENTED).
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from caffecompat.errors import NotSupportedError
from caffecompat.layers.graph import INT64, GraphBuilder
from caffecompat.layers.ops import reduce_sum, split
from caffecompat.layers.registry import Layer, LayerNode, Shape, register
from caffecompat.proto import caffe_pb2

CodeType = caffe_pb2.PriorBoxParameter


def _split4(g: GraphBuilder, x: str, axis: int) -> list[str]:
    """x's four coordinates along `axis`, each kept as an axis of size 1."""
    parts = [g.tmp("coordinate") for _ in range(4)]
    split(g, x, axis, [1, 1, 1, 1], parts)
    return parts


def _squeeze(g: GraphBuilder, x: str, axis: int) -> str:
    # Squeeze/Unsqueeze take their axes as an input from opset 13 on, as an attribute before.
    return g.op1("Squeeze", [x, g.ints([axis])]) if g.opset >= 13 else g.op1("Squeeze", [x], axes=[axis])


def _unsqueeze(g: GraphBuilder, x: str, axis: int) -> str:
    return g.op1("Unsqueeze", [x, g.ints([axis])]) if g.opset >= 13 else g.op1("Unsqueeze", [x], axes=[axis])


def _legacy(node: LayerNode, j: int) -> tuple[int, int, int, int]:
    """Blob::num/channels/height/width of bottom j."""
    s = node.bottom_shapes[j]
    if not 1 <= len(s) <= 4:
        raise node.error(f"bottom #{j} has {len(s)} axes; DetectionOutput reads blobs of 1 to 4 axes")
    return tuple(s) + (1,) * (4 - len(s))  # type: ignore[return-value]


@register("DetectionOutput")
class DetectionOutput(Layer):
    """SSD's detections: decode, per-class NMS, keep_top_k; a 1 x 1 x D x 7 top of data-dependent D."""

    min_bottoms = 3
    max_bottoms = 4
    min_tops = max_tops = 1
    has_backward = False
    data_dependent_axes = (2,)

    def _setup(self, node: LayerNode) -> tuple[int, int, int, list[int]]:
        """LayerSetUp's and Reshape's checks: (num, priors, location classes, the classes scored)."""
        p = node.param.detection_output_param
        if not p.HasField("num_classes"):
            raise node.error("detection_output_param.num_classes must be given")
        if p.visualize or len(node.bottoms) > 3:
            raise NotSupportedError(f"layer {node.label} of type DetectionOutput (field detection_output_param."
                                    "visualize of SSD: drawing the detections on the images)")
        if p.save_output_param.output_directory:
            raise NotSupportedError(f"layer {node.label} of type DetectionOutput (field detection_output_param."
                                    "save_output_param of SSD: writing detection files)")
        if not p.normalized_bbox:
            raise NotSupportedError(f"layer {node.label} of type DetectionOutput (field detection_output_param."
                                    "normalized_bbox of OpenCV's importer)")
        if p.nms_param.nms_threshold < 0:
            raise node.error("nms_param.nms_threshold must be non-negative")
        if not 0 < p.nms_param.eta <= 1:
            raise node.error("nms_param.eta must be in (0, 1]")
        if p.code_type not in (CodeType.CORNER, CodeType.CENTER_SIZE, CodeType.CORNER_SIZE):
            raise node.error(f"unknown code_type {p.code_type}")
        loc_classes = 1 if p.share_location else p.num_classes
        num, loc_channels = _legacy(node, 0)[:2]
        conf_num, conf_channels = _legacy(node, 1)[:2]
        num_priors = _legacy(node, 2)[2] // 4
        if num != conf_num:
            raise node.error(f"bottoms #0 and #1 have {num} and {conf_num} images; they must agree")
        if num_priors * loc_classes * 4 != loc_channels:
            raise node.error(f"bottom #0 has {loc_channels} channels; {num_priors} priors need "
                             f"{num_priors * loc_classes * 4} location predictions")
        if num_priors * p.num_classes != conf_channels:
            raise node.error(f"bottom #1 has {conf_channels} channels; {num_priors} priors need "
                             f"{num_priors * p.num_classes} confidence predictions")
        if int(np.prod(node.bottom_shapes[2], dtype=np.int64)) < 2 * num_priors * 4:
            raise node.error("bottom #2 must hold the priors and their variances (1 x 2 x P*4)")
        classes = [c for c in range(p.num_classes) if c != p.background_label_id]
        return num, num_priors, loc_classes, classes

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        self._setup(node)
        # DetectionOutputLayer::Reshape: the number of detections is unknown before Forward, "(fake) 1".
        return [(1, 1, 1, 7)]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        if g.opset < 11:
            raise NotSupportedError(f"layer {node.label} of type DetectionOutput at opset {g.opset} (it needs "
                                    "NonMaxSuppression, TopK and ScatterElements of opset 11 or newer)")
        p = node.param.detection_output_param
        num, priors, loc_classes, classes = self._setup(node)
        k = len(classes)
        boxes = self._decode(node, g, num, priors, loc_classes)  # num x P x L x 4
        # GetConfidenceScores: conf is P x num_classes per image; score the classes other than the background.
        conf = g.op1("Reshape", [node.bottoms[1], g.ints([num, priors, p.num_classes])])
        conf = g.op1("Transpose", [conf], perm=[0, 2, 1])
        scores = g.op1("Gather", [conf, g.ints(classes)], axis=1)  # num x K x P
        top_k = p.nms_param.top_k if p.nms_param.HasField("top_k") else -1
        cands = priors if top_k < 0 or top_k >= priors else top_k
        if k == 0 or cands == 0:
            self._output(node, g, num, None)
            return
        # GetMaxScoreIndex: the top_k best candidates, in descending score order (stable), per image and class.
        values, index = g.op("TopK", [scores, g.ints([cands])], 2, axis=-1, largest=1, sorted=1)
        flat = g.op1("Add", [index, g.const(np.arange(num).reshape(num, 1, 1) * priors, np.int64, "image_offset")])
        if loc_classes > 1:
            label = np.asarray(classes, np.int64).reshape(1, k, 1)
            flat = g.op1("Add", [g.op1("Mul", [flat, g.const(loc_classes, np.int64)]), g.const(label, np.int64)])
        cand_boxes = g.op1("Gather", [g.op1("Reshape", [boxes, g.ints([-1, 4])]), flat], axis=0)
        cand_boxes = g.op1("Reshape", [cand_boxes, g.ints([num * k, cands, 4])])
        cand_scores = g.op1("Reshape", [values, g.ints([num * k, 1, cands])])
        threshold = p.confidence_threshold if p.HasField("confidence_threshold") else None
        if p.nms_param.eta < 1:
            pair, cand = self._adaptive_nms(g, self._collapse_invalid(g, cand_boxes), values, num * k, cands,
                                            p.nms_param.nms_threshold, p.nms_param.eta, threshold)
        else:
            nms_inputs = [self._collapse_invalid(g, cand_boxes), cand_scores, g.ints([cands]),
                          g.const([p.nms_param.nms_threshold], np.float32, "nms_threshold")]
            if threshold is not None:
                nms_inputs.append(g.const([threshold], np.float32, "confidence_threshold"))
            selected = g.op1("NonMaxSuppression", nms_inputs)  # S x (image * K + class, 0, candidate)
            pair = _squeeze(g, g.op1("Gather", [selected, g.ints([0])], axis=1), 1)
            cand = _squeeze(g, g.op1("Gather", [selected, g.ints([2])], axis=1), 1)
        row = g.op1("Add", [g.op1("Mul", [pair, g.const(cands, np.int64)]), cand])
        score = g.op1("Gather", [g.op1("Reshape", [values, g.ints([-1])]), row])
        box = g.op1("Gather", [g.op1("Reshape", [cand_boxes, g.ints([-1, 4])]), row], axis=0)
        kk = g.const(k, np.int64)
        image = g.op1("Div", [pair, kk])
        label = g.op1("Gather", [g.const(classes, np.int64, "labels"), g.op1("Mod", [pair, kk])])
        rows = g.op1("Concat", [_unsqueeze(g, g.op1("Cast", [image], to=1), 1),
                                _unsqueeze(g, g.op1("Cast", [label], to=1), 1),
                                _unsqueeze(g, score, 1), box], axis=1)
        if p.keep_top_k > -1:
            rows = g.op1("Compress", [rows, self._keep_top_k(g, num, score, image, p.keep_top_k)], axis=0)
        self._output(node, g, num, rows)

    @staticmethod
    def _decode(node: LayerNode, g: GraphBuilder, num: int, priors: int, loc_classes: int) -> str:
        """DecodeBBoxesAll: num x P x L x 4 boxes (xmin, ymin, xmax, ymax) from the predictions and priors."""
        p = node.param.detection_output_param
        loc = g.op1("Reshape", [node.bottoms[0], g.ints([num, priors, loc_classes, 4])])
        lx, ly, lx2, ly2 = _split4(g, loc, 3)
        flat = g.op1("Reshape", [node.bottoms[2], g.ints([-1])])
        prior = g.op1("Slice", [flat, g.ints([0]), g.ints([2 * priors * 4]), g.ints([0])])
        prior = g.op1("Reshape", [prior, g.ints([2, priors, 1, 4])])
        box = _squeeze(g, g.op1("Slice", [prior, g.ints([0]), g.ints([1]), g.ints([0])]), 0)
        px, py, px2, py2 = _split4(g, box, 2)  # P x 1 x 1 each
        if not p.variance_encoded_in_target:
            var = _squeeze(g, g.op1("Slice", [prior, g.ints([1]), g.ints([2]), g.ints([0])]), 0)
            vs = _split4(g, var, 2)
            lx, ly, lx2, ly2 = (g.op1("Mul", [v, t]) for v, t in zip(vs, (lx, ly, lx2, ly2)))
        if p.code_type == CodeType.CORNER:
            # DecodeBBox, CORNER: the prior's corners plus the (variance-scaled) offsets.
            corners = [g.op1("Add", [a, b]) for a, b in ((px, lx), (py, ly), (px2, lx2), (py2, ly2))]
        else:
            width = g.op1("Sub", [px2, px])
            height = g.op1("Sub", [py2, py])
            if p.code_type == CodeType.CORNER_SIZE:
                # DecodeBBox, CORNER_SIZE: corners plus offsets times the prior's width/height.
                corners = [g.op1("Add", [a, g.op1("Mul", [b, s])])
                           for a, b, s in ((px, lx, width), (py, ly, height), (px2, lx2, width), (py2, ly2, height))]
            else:
                # DecodeBBox, CENTER_SIZE: offsets of the center in prior sizes, log-scale width and height.
                half = g.scalar(0.5)
                cx = g.op1("Add", [g.op1("Mul", [lx, width]), g.op1("Mul", [g.op1("Add", [px, px2]), half])])
                cy = g.op1("Add", [g.op1("Mul", [ly, height]), g.op1("Mul", [g.op1("Add", [py, py2]), half])])
                hw = g.op1("Mul", [g.op1("Mul", [g.op1("Exp", [lx2]), width]), half])
                hh = g.op1("Mul", [g.op1("Mul", [g.op1("Exp", [ly2]), height]), half])
                corners = [g.op1("Sub", [cx, hw]), g.op1("Sub", [cy, hh]), g.op1("Add", [cx, hw]),
                           g.op1("Add", [cy, hh])]
        if p.clip:
            # OpenCV's DecodeBBox with clip_bbox (normalized boxes): each coordinate clipped to [0, 1].
            corners = [g.op1("Max", [g.op1("Min", [c, g.scalar(1.0)]), g.scalar(0.0)]) for c in corners]
        return g.op1("Concat", corners, axis=3)

    @staticmethod
    def _adaptive_nms(g: GraphBuilder, boxes: str, values: str, pairs: int, cands: int, nms: float, eta: float,
                      threshold: float | None) -> tuple[str, str]:
        """ApplyNMSFast with eta < 1 over `pairs` (image, class) lists of `cands` boxes each, best first.

        Returns (pair, candidate) of the kept boxes in NonMaxSuppression's order.
        """
        # Coordinates and areas as pairs x C; box i's overlaps with every box are made inside the loop
        # (memory pairs x C, not pairs x C x C).
        x, y, x2, y2 = (g.op1("Reshape", [c, g.ints([pairs, cands])]) for c in _split4(g, boxes, 2))
        area = g.op1("Mul", [g.op1("Sub", [x2, x]), g.op1("Sub", [y2, y])])
        scores = g.op1("Reshape", [values, g.ints([pairs, cands])])
        if threshold is None:
            valid = g.op1("Greater", [scores, g.scalar(float(-np.finfo(np.float32).max))])
        else:
            valid = g.op1("Greater", [scores, g.scalar(threshold)])
        body = g.subgraph()
        names = {n: body.tmp(n) for n in ("i", "cond", "kept", "thr")}
        i1 = body.op1("Reshape", [names["i"], body.ints([1])])

        def at_i(v: str) -> str:  # pairs x 1: box i's value
            return body.op1("Gather", [v, i1], axis=1)

        zero = body.scalar(0.0)
        iw = body.op1("Max", [body.op1("Sub", [body.op1("Min", [x2, at_i(x2)]), body.op1("Max", [x, at_i(x)])]), zero])
        ih = body.op1("Max", [body.op1("Sub", [body.op1("Min", [y2, at_i(y2)]), body.op1("Max", [y, at_i(y)])]), zero])
        inter = body.op1("Mul", [iw, ih])
        union = body.op1("Sub", [body.op1("Add", [area, at_i(area)]), inter])
        # JaccardOverlap: a box of size 0 overlaps nothing.
        sized = body.op1("And", [body.op1("Greater", [area, zero]), body.op1("Greater", [at_i(area), zero])])
        row = body.op1("Where", [sized, body.op1("Div", [inter, body.op1("Where", [sized, union, body.scalar(1.0)])]),
                                 zero])
        over = body.op1("Cast", [body.op1("And", [names["kept"], body.op1("Greater", [row, names["thr"]])])], to=1)
        hit = reduce_sum(body, over, [1], keepdims=1)  # pairs x 1
        suppressed = body.op1("Greater", [hit, body.scalar(0.0)])
        keep = body.op1("And", [body.op1("Gather", [valid, i1], axis=1), body.op1("Not", [suppressed])])
        onehot = body.op1("Equal", [body.const(np.arange(cands).reshape(1, cands), np.int64, "candidates"), i1])
        kept = body.op1("Or", [names["kept"], body.op1("And", [keep, onehot])])
        # ApplyNMSFast: after a kept box, adaptive_threshold *= eta while it is above 0.5.
        shrink = body.op1("And", [keep, body.op1("Greater", [names["thr"], body.scalar(0.5)])])
        thr = body.op1("Where", [shrink, body.op1("Mul", [names["thr"], body.scalar(eta)]), names["thr"]])
        cond = body.op1("Identity", [names["cond"]])
        graph = helper.make_graph(
            body.nodes, f"{g.tmp('nms_body')}",
            [helper.make_tensor_value_info(names["i"], TensorProto.INT64, []),
             helper.make_tensor_value_info(names["cond"], TensorProto.BOOL, []),
             helper.make_tensor_value_info(names["kept"], TensorProto.BOOL, [pairs, cands]),
             helper.make_tensor_value_info(names["thr"], TensorProto.FLOAT, [pairs, 1])],
            [helper.make_tensor_value_info(cond, TensorProto.BOOL, []),
             helper.make_tensor_value_info(kept, TensorProto.BOOL, [pairs, cands]),
             helper.make_tensor_value_info(thr, TensorProto.FLOAT, [pairs, 1])])
        kept0 = g.const(np.zeros((pairs, cands), bool), np.bool_, "none_kept")
        thr0 = g.const(np.full((pairs, 1), nms, np.float32), np.float32, "nms_threshold")
        # The candidates above the threshold are a prefix of each (sorted) list: loop over the longest prefix.
        longest = g.op1("ReduceMax", [reduce_sum(g, g.op1("Cast", [valid], to=INT64), [1])], keepdims=0)
        final = g.op("Loop", [longest, g.const(True, np.bool_, "true"), kept0, thr0], 2, body=graph)[0]
        where = g.op1("NonZero", [final])  # 2 x S, row-major: by pair, then candidate (best first)
        pair = g.op1("Gather", [where, g.const(0, np.int64)], axis=0)
        cand = g.op1("Gather", [where, g.const(1, np.int64)], axis=0)
        return pair, cand

    @staticmethod
    def _collapse_invalid(g: GraphBuilder, boxes: str) -> str:
        """Boxes with xmax < xmin or ymax < ymin (SSD's BBoxSize 0, overlapping nothing) as a point at their min."""
        x, y, x2, y2 = _split4(g, boxes, 2)
        # not (x2 < x): GreaterOrEqual is opset 12's, and this layer runs from opset 11 on.
        valid = g.op1("Not", [g.op1("Or", [g.op1("Less", [x2, x]), g.op1("Less", [y2, y])])])
        return g.op1("Concat", [x, y, g.op1("Where", [valid, x2, x]), g.op1("Where", [valid, y2, y])], axis=2)

    @staticmethod
    def _keep_top_k(g: GraphBuilder, num: int, score: str, image: str, keep: int) -> str:
        """The detections among the `keep` best-scoring of their image (a bool mask over the rows)."""
        # Rank each detection within its image: sort all by score (ties to the earlier row), then count per image.
        count = g.op1("Shape", [score])
        order = g.op("TopK", [score, count], 2, axis=0, largest=1, sorted=1)[1]
        images = g.const(np.arange(num, dtype=np.int64).reshape(1, num), np.int64, "images")
        onehot = g.op1("Cast", [g.op1("Equal", [_unsqueeze(g, g.op1("Gather", [image, order]), 1),
                                               images])], to=INT64)
        rank = reduce_sum(g, g.op1("Mul", [g.op1("CumSum", [onehot, g.const(0, np.int64)]), onehot]), [1])
        kept = g.op1("Cast", [g.op1("Less", [rank, g.const(keep + 1, np.int64)])], to=INT64)
        zeros = g.op1("ConstantOfShape", [count], value=helper.make_tensor("value", INT64, [1], [0]))
        mask = g.op1("ScatterElements", [zeros, order, kept], axis=0)
        return g.op1("Cast", [mask], to=9)  # BOOL

    @staticmethod
    def _output(node: LayerNode, g: GraphBuilder, num: int, rows: str | None) -> None:
        """The 1 x 1 x D x 7 top; with no detection, one (image, -1, ..., -1) row per image."""
        fallback = np.full((num, 7), -1.0, np.float32)
        fallback[:, 0] = np.arange(num)
        fallback = g.const(fallback, hint="no_detection")
        if rows is None:
            g.op1("Reshape", [fallback, g.ints([1, 1, num, 7])], node.tops[0])
            return
        found = g.op1("Slice", [g.op1("Shape", [rows]), g.ints([0]), g.ints([1])])
        none = g.op1("Cast", [g.op1("Equal", [found, g.const([0], np.int64)])], to=INT64)
        extra = g.op1("Slice", [fallback, g.ints([0]), g.op1("Mul", [none, g.ints([num])]), g.ints([0])])
        out = g.op1("Concat", [rows, extra], axis=0)
        g.op1("Reshape", [out, g.ints([1, 1, -1, 7])], node.tops[0])
