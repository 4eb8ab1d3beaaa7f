"""A user's own caffe.proto (`-proto FILE`): files of a rarer Caffe fork, read with that fork's schema.

The .proto is compiled at run time by grpcio-tools' bundled protoc (no system
protoc needed; `pip install 'caffecompat[proto]'`). A text file is parsed with
the user's schema, as the fork's Caffe parses it, then copied into our
NetParameter (or SolverParameter) field by field, by name:

* a field our schema has is copied (enum values by name, numbers converted
  where the value fits);
* a field our schema lacks, or has with another kind of value, is a problem,
  `layer <name> of type <T> (field <f> of <FILE>)`; every problem of the file
  is reported in one message, together with the fork layers we do not
  implement (caffecompat.formats.forks);
* where the user's schema gives a field another default than ours, and the
  file sets the message holding it but not the field, the user's default is
  written in, so the value means what the fork's Caffe reads (an absent
  message keeps our defaults).

`using(path)` makes a schema the default of every reader in this process (the
CLI's -proto flag); the readers also take it as a `proto=` argument.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

from google.protobuf import descriptor as pb_descriptor
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf import message as pb_message

from caffecompat.errors import CaffeCompatError

M = TypeVar("M", bound=pb_message.Message)

_active: list[str] = []


@contextlib.contextmanager
def using(path: str | os.PathLike | None) -> Iterator[None]:
    """Within the block, readers without an explicit `proto=` use the schema at `path` (None: ours)."""
    if path is None:
        yield
        return
    schema(path)  # compile now: a broken .proto is reported before anything else happens
    _active.append(str(path))
    try:
        yield
    finally:
        _active.pop()


def active(proto: str | os.PathLike | None = None) -> str | None:
    """The user schema to read with: `proto` when given, else the one `using` set, else None (ours)."""
    if proto is not None:
        return str(proto)
    return _active[-1] if _active else None


class UserSchema:
    """A compiled user caffe.proto: its message classes by simple name."""

    def __init__(self, path: str, files: list[descriptor_pb2.FileDescriptorProto]) -> None:
        self.path = path
        self.label = Path(path).name
        pool = descriptor_pool.DescriptorPool()
        for f in files:
            pool.Add(f)
        self._names: dict[str, str] = {}
        for f in files:
            for m in f.message_type:
                full = f"{f.package}.{m.name}" if f.package else m.name
                self._names.setdefault(m.name, full)
        self._pool = pool

    def message_class(self, name: str) -> type[pb_message.Message]:
        """The class of message `name` (NetParameter, SolverParameter) in this schema."""
        full = self._names.get(name)
        if full is None:
            raise CaffeCompatError(f"{self.path}: defines no message {name}; is it a Caffe caffe.proto?")
        return message_factory.GetMessageClass(self._pool.FindMessageTypeByName(full))


# protoc's own log lines (absl's start-up notice, warnings and infos), not the compile errors.
_NOISE = re.compile(r"^(WARNING: All log messages before absl|[WI]\d{4} )")


def _protoc_include() -> str:
    """grpcio-tools' folder of the well-known .proto files (google/protobuf/*.proto)."""
    spec = importlib.util.find_spec("grpc_tools")
    return str(Path(spec.origin).parent / "_proto")


@functools.lru_cache(maxsize=8)
def _compile(path: str, mtime: float) -> UserSchema:
    if importlib.util.find_spec("grpc_tools") is None:
        raise CaffeCompatError(
            f"-proto {path}: compiling a caffe.proto needs grpcio-tools (it bundles protoc); install it with "
            "`pip install 'caffecompat[proto]'` (or `pip install grpcio-tools`)")
    p = Path(path).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        # Data from files is data: protoc reads a leading '@' as a file of options and a leading '-' as an
        # option, splits -I at ':' and '='; so it sees only names we made: absolute, under our own folder,
        # where `src` links to the .proto's folder, its only import path besides the bundled protos.
        src = Path(tmp).resolve() / "src"
        os.symlink(p.parent, src, target_is_directory=True)
        out = Path(tmp).resolve() / "schema.desc"
        run = subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", f"--proto_path={src}", f"--proto_path={_protoc_include()}",
             "--include_imports", f"--descriptor_set_out={out}", str(src / p.name)],
            capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if run.returncode != 0:
            detail = " | ".join(line.strip().replace(str(src), str(p.parent))
                                for line in run.stderr.splitlines() if line.strip() and not _NOISE.match(line))[:600]
            raise CaffeCompatError(f"-proto {path}: protoc cannot compile it: {detail or 'unknown error'}")
        files = list(descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file)
    _check_imports(path, p.parent, files)
    return UserSchema(path, files)


def _check_imports(path: str, folder: Path, files: list[descriptor_pb2.FileDescriptorProto]) -> None:
    """Refuse imports that reach outside the .proto's folder (by a link) other than the bundled google/protobuf."""
    bundled = Path(_protoc_include()).resolve()
    for f in files:
        if f.name.startswith("google/protobuf/") and (bundled / f.name).is_file() \
                and not (folder / f.name).exists():
            continue
        real = (folder / f.name).resolve()
        if not real.is_relative_to(folder):
            raise CaffeCompatError(
                f"-proto {path}: imports {f.name}, which leads outside {folder} (to {real}); -proto reads only "
                "the .proto's own folder and the bundled google/protobuf files: copy the import beside it")


def schema(path: str | os.PathLike) -> UserSchema:
    """The compiled schema of the .proto at `path` (cached while the file is unchanged)."""
    p = Path(path)
    if not p.is_file():
        raise CaffeCompatError(f"-proto {p}: no such file")
    return _compile(str(p), p.stat().st_mtime)


# --- copying a message of the user's schema into ours, by field names ---------------------------------

_INT_TYPES = frozenset({pb_descriptor.FieldDescriptor.TYPE_INT32, pb_descriptor.FieldDescriptor.TYPE_INT64,
                        pb_descriptor.FieldDescriptor.TYPE_UINT32, pb_descriptor.FieldDescriptor.TYPE_UINT64,
                        pb_descriptor.FieldDescriptor.TYPE_SINT32, pb_descriptor.FieldDescriptor.TYPE_SINT64,
                        pb_descriptor.FieldDescriptor.TYPE_FIXED32, pb_descriptor.FieldDescriptor.TYPE_FIXED64,
                        pb_descriptor.FieldDescriptor.TYPE_SFIXED32, pb_descriptor.FieldDescriptor.TYPE_SFIXED64})
_FLOAT_TYPES = frozenset({pb_descriptor.FieldDescriptor.TYPE_FLOAT, pb_descriptor.FieldDescriptor.TYPE_DOUBLE})


def _kind(f: pb_descriptor.FieldDescriptor) -> str:
    if f.type in (f.TYPE_MESSAGE, f.TYPE_GROUP):
        return "message"
    if f.type == f.TYPE_ENUM:
        return "enum"
    if f.type in _INT_TYPES or f.type in _FLOAT_TYPES:
        return "number"
    if f.type == f.TYPE_BOOL:
        return "bool"
    return "text"


class _Copier:
    def __init__(self, label: str) -> None:
        self.label = label
        self.problems: list[str] = []

    def problem(self, context: str, path: str, why: str = "") -> None:
        self.problems.append(f"{context} (field {path} of {self.label}{why})")

    def value(self, src: pb_descriptor.FieldDescriptor, dst: pb_descriptor.FieldDescriptor, v: object,
              context: str, path: str, record: bool = True) -> tuple[bool, object]:
        """(ok, the value in our schema's terms) of one scalar value; `record` notes a failure as a problem."""
        if _kind(src) == "enum":
            name = src.enum_type.values_by_number[v].name if v in src.enum_type.values_by_number else str(v)
            ours = dst.enum_type.values_by_name.get(name)
            if ours is None:
                if record:
                    self.problem(context, path, f": value {name}")
                return False, None
            return True, ours.number
        if dst.type in _INT_TYPES:
            if isinstance(v, float):
                if not v.is_integer():
                    if record:
                        self.problem(context, path, f": {v} is not a whole number here")
                    return False, None
                v = int(v)
            return True, v
        if dst.type in _FLOAT_TYPES:
            return True, float(v)
        return True, v

    def copy(self, src: pb_message.Message, dst: pb_message.Message, context: str, path: str = "") -> None:
        ours = dst.DESCRIPTOR.fields_by_name
        for f, v in src.ListFields():
            where = f"{path}{f.name}"
            g = ours.get(f.name)
            if g is None:
                self.problem(context, where)
                continue
            if _kind(f) != _kind(g):
                self.problem(context, where, f": a {_kind(f)} there, a {_kind(g)} in caffecompat's schema")
                continue
            repeated = f.is_repeated
            values = list(v) if repeated else [v]
            if not g.is_repeated and len(values) != 1:
                self.problem(context, where, f": {len(values)} values, where caffecompat's schema takes one")
                continue
            if _kind(f) == "message":
                for i, item in enumerate(values):
                    target = getattr(dst, g.name).add() if g.is_repeated else getattr(dst, g.name)
                    sub = context
                    if f.message_type.name in ("LayerParameter", "V1LayerParameter") and f.name in ("layer", "layers"):
                        kind = item.type if isinstance(item.type, str) else f.message_type.fields_by_name[
                            "type"].enum_type.values_by_number.get(item.type).name
                        sub = f"layer {item.name} of type {kind}"
                        self.copy(item, target, sub)
                    else:
                        target.SetInParent()
                        self.copy(item, target, sub, f"{where}[{i}]." if repeated else f"{where}.")
                continue
            converted = []
            for item in values:
                ok, c = self.value(f, g, item, context, where)
                if not ok:
                    break
                converted.append(c)
            else:
                try:
                    if g.is_repeated:
                        getattr(dst, g.name).extend(converted)
                    else:
                        setattr(dst, g.name, converted[0])
                except (ValueError, TypeError) as e:
                    self.problem(context, where, f": {e}")
        self.defaults(src, dst, context, path)

    def defaults(self, src: pb_message.Message, dst: pb_message.Message, context: str, path: str) -> None:
        # A field the file leaves out reads as the user's schema's default in the fork's Caffe.
        ours = dst.DESCRIPTOR.fields_by_name
        for f in src.DESCRIPTOR.fields:
            g = ours.get(f.name)
            if (g is None or f.is_repeated or g.is_repeated or _kind(f) != _kind(g)
                    or _kind(f) == "message" or src.HasField(f.name)):
                continue
            ok, theirs = self.value(f, g, f.default_value, context, f"{path}{f.name}", record=False)
            if ok and theirs != g.default_value:
                setattr(dst, g.name, theirs)


def to_ours(msg: pb_message.Message, cls: type[M], label: str, context: str) -> tuple[M, list[str]]:
    """`msg` of a user schema as our `cls`, and the problems (fields we cannot hold) found on the way."""
    copier = _Copier(label)
    out = cls()
    # (the copy goes no deeper than our schema nests: a recursive user schema ends in a problem, not a recursion)
    copier.copy(msg, out, context)
    return out, copier.problems
