"""A fast reader for the protobuf text format that prototxts use, falling back to protobuf's own.

google.protobuf.text_format is pure Python at about 0.3 ms per layer, so a
10^5-layer prototxt took minutes before anything else ran. `parse_fast`
reads the subset real prototxts are written in (`name: value`, `name { ... }`,
`name: { ... }`, numbers, quoted strings, enum names, `#` comments) with one
regular expression over the text and sets the fields straight from their
descriptors. Anything outside that subset, and anything protobuf would refuse
(an unknown field, a singular field given twice, a number out of range, a
oneof given twice), makes it give up and return False: the caller then parses
with text_format, which gives its own errors and its exact semantics.
"""

from __future__ import annotations

import math
import re

from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message as pb_message
from google.protobuf import text_encoding

FD = pb_descriptor.FieldDescriptor

# One match per token, the blanks and comments before it included: (string, number, name, punctuation, other);
# blanks at the end match the empty end.
_TOKEN = re.compile(r"""
    (?:[ \t\r\n\f\v]+|\#[^\n]*)*
    (?:(?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
     |(?P<num>-?(?:[0-9]+\.[0-9]*(?:[eE][-+]?[0-9]+)?|\.[0-9]+(?:[eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+
              |0[xX][0-9a-fA-F]+|[0-9]+)(?![A-Za-z0-9_.]))
     |(?P<id>[A-Za-z_][A-Za-z0-9_]*)
     |(?P<punct>[{}:])
     |\Z
     |(?P<other>.))
""", re.X | re.S)
_INT = re.compile(r"-?(?:0|[1-9][0-9]*|0[xX][0-9a-fA-F]+)$")
_INT_RANGES = {
    FD.TYPE_INT32: (-(1 << 31), (1 << 31) - 1), FD.TYPE_SINT32: (-(1 << 31), (1 << 31) - 1),
    FD.TYPE_SFIXED32: (-(1 << 31), (1 << 31) - 1), FD.TYPE_UINT32: (0, (1 << 32) - 1),
    FD.TYPE_FIXED32: (0, (1 << 32) - 1), FD.TYPE_INT64: (-(1 << 63), (1 << 63) - 1),
    FD.TYPE_SINT64: (-(1 << 63), (1 << 63) - 1), FD.TYPE_SFIXED64: (-(1 << 63), (1 << 63) - 1),
    FD.TYPE_UINT64: (0, (1 << 64) - 1), FD.TYPE_FIXED64: (0, (1 << 64) - 1),
}
_TRUE, _FALSE = ("true", "t", "1", "True"), ("false", "f", "0", "False")
_FLOAT_WORDS = {"inf": math.inf, "infinity": math.inf, "nan": math.nan}


class _GiveUp(Exception):
    """Outside the fast reader's subset: text_format decides."""


def _tokens(text: str) -> list[tuple[str, str]]:
    out = []
    append = out.append
    for s, n, name, p, other in _TOKEN.findall(text):
        if s:
            append(("str", s))
        elif n:
            append(("num", n))
        elif name:
            append(("id", name))
        elif p:
            append(("punct", p))
        elif other:
            raise _GiveUp
    append(("end", ""))
    return out


def _scalar(field: FD, kind: str, text: str):
    t = field.type
    if t in (FD.TYPE_STRING, FD.TYPE_BYTES):
        if kind != "str":
            raise _GiveUp
        inner = text[1:-1]
        raw = text_encoding.CUnescape(inner) if "\\" in inner else inner.encode("utf-8")
        if t == FD.TYPE_BYTES:
            return raw
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _GiveUp from None
    if t in _INT_RANGES:
        if kind != "num" or not _INT.match(text):
            raise _GiveUp
        value = int(text, 0)
        low, high = _INT_RANGES[t]
        if not low <= value <= high:
            raise _GiveUp
        return value
    if t in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
        if kind == "num" and "x" not in text and "X" not in text:
            return float(text)
        if kind == "id" and text.lower() in _FLOAT_WORDS:
            return _FLOAT_WORDS[text.lower()]
        raise _GiveUp
    if t == FD.TYPE_BOOL:
        if text in _TRUE and kind != "str":
            return True
        if text in _FALSE and kind != "str":
            return False
        raise _GiveUp
    if t == FD.TYPE_ENUM:
        if kind == "id":
            value = field.enum_type.values_by_name.get(text)
            if value is None:
                raise _GiveUp
            return value.number
        if kind == "num" and _INT.match(text) and int(text, 0) in field.enum_type.values_by_number:
            return int(text, 0)
        raise _GiveUp
    raise _GiveUp


def _merge(msg: pb_message.Message, toks: list[tuple[str, str]], i: int, nested: bool) -> int:
    fields = msg.DESCRIPTOR.fields_by_name
    while True:
        kind, text = toks[i]
        if kind == "punct" and text == "}" and nested:
            return i + 1
        if kind == "end" and not nested:
            return i
        field = fields.get(text) if kind == "id" else None
        if field is None or field.containing_oneof is not None:
            raise _GiveUp
        repeated = field.is_repeated
        i += 1
        kind, text = toks[i]
        if field.type == FD.TYPE_MESSAGE:
            if text == ":" and kind == "punct":
                i += 1
                kind, text = toks[i]
            if kind != "punct" or text != "{":
                raise _GiveUp
            if repeated:
                sub = getattr(msg, field.name).add()
            else:
                if msg.HasField(field.name):
                    raise _GiveUp
                sub = getattr(msg, field.name)
                sub.SetInParent()
            i = _merge(sub, toks, i + 1, True)
            continue
        if kind != "punct" or text != ":":
            raise _GiveUp
        kind, text = toks[i + 1]
        i += 2
        value = _scalar(field, kind, text)
        if kind == "str" and toks[i][0] == "str":
            raise _GiveUp  # adjacent strings concatenate
        if repeated:
            getattr(msg, field.name).append(value)
        else:
            if msg.HasField(field.name):
                raise _GiveUp
            setattr(msg, field.name, value)


def parse_fast(text: str, msg: pb_message.Message) -> bool:
    """Merge `text` into the empty message `msg` and return True, or return False (msg then holds part of
    it and must be discarded) when the text needs text_format: a construct outside the subset, or an error."""
    try:
        _merge(msg, _tokens(text), 0, False)
    # RecursionError: text nested past Python's limit (a recursive -proto schema); text_format says so.
    except (_GiveUp, ValueError, TypeError, AttributeError, IndexError, RecursionError):
        return False
    return True
