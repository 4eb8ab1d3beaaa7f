"""pycaffe's net_spec: write a net in Python and get its NetParameter (the same text pycaffe writes).

    from caffecompat import layers as L, params as P, NetSpec
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 32, 32]))
    n.conv1 = L.Convolution(n.data, num_output=16, kernel_size=5, weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    n.pool1 = L.Pooling(n.relu1, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    print(n.to_proto())

`L.<Type>(*bottoms, **fields)` is one layer: `ntop` (default 1) and
`in_place` are options of the call; a field ending in `param` (or named like a
LayerParameter field: `param`, `include`, `loss_weight`, ...) goes to the layer,
any other to the layer type's own `<type>_param`. Dicts become messages, lists
repeated fields, a single value for a repeated field a one-item list. Blobs and
layers are named after the NetSpec attributes they are assigned to; the others
get `<Type><n>`, numbered per type in the order the net is written out, as
pycaffe does.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any

from caffecompat.proto import caffe_pb2


def param_name_dict() -> dict[str, str]:
    """Layer type name -> the stem of its LayerParameter field (`Convolution` -> `convolution`)."""
    layer = caffe_pb2.LayerParameter()
    out = {}
    for f in layer.DESCRIPTOR.fields:
        if f.name.endswith("_param") and f.message_type is not None:
            type_name = f.message_type.name
            if type_name.endswith("Parameter"):
                out[type_name[: -len("Parameter")]] = f.name[: -len("_param")]
    return out


def assign_proto(proto: Any, name: str, value: Any) -> None:
    """Set field `name` of message `proto` from a Python value: dicts are messages, lists repeated fields."""
    repeated = hasattr(getattr(proto, name), "extend")
    if repeated and not isinstance(value, list):
        value = [value]
    if isinstance(value, list):
        if value and isinstance(value[0], dict):
            for item in value:
                message = getattr(proto, name).add()
                for k, v in item.items():
                    assign_proto(message, k, v)
        else:
            getattr(proto, name).extend(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            assign_proto(getattr(proto, name), k, v)
    else:
        setattr(proto, name, value)


class Top:
    """One output blob of a layer call (its `n`-th top)."""

    def __init__(self, fn: Function, n: int) -> None:
        self.fn = fn
        self.n = n

    def to_proto(self) -> caffe_pb2.NetParameter:
        """The NetParameter of every layer this top depends on."""
        return to_proto(self)

    def _to_proto(self, layers: OrderedDict, names: dict, autonames: Counter) -> None:
        self.fn._to_proto(layers, names, autonames)


class Function:
    """One layer call: its type, its bottoms (Tops of other calls) and its fields."""

    def __init__(self, type_name: str, inputs: tuple, params: dict[str, Any]) -> None:
        self.type_name = type_name
        for i, bottom in enumerate(inputs):
            if not isinstance(bottom, Top):
                raise TypeError(f"{type_name} input {i} is not a Top (type is {type(bottom)})")
        self.inputs = inputs
        self.params = dict(params)
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _top_name(self, top: Top, names: dict, autonames: Counter) -> str:
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = f"{top.fn.type_name}{autonames[top.fn.type_name]}"
        return names[top]

    def _name(self, names: dict, autonames: Counter) -> str:
        # A layer is named as its first top; a layer without tops gets a name of its own.
        if self not in names:
            if self.ntop > 0:
                names[self] = self._top_name(self.tops[0], names, autonames)
            else:
                autonames[self.type_name] += 1
                names[self] = f"{self.type_name}{autonames[self.type_name]}"
        return names[self]

    def _to_proto(self, layers: OrderedDict, names: dict, autonames: Counter) -> None:
        if self in layers:
            return
        bottoms = []
        for top in self.inputs:
            top._to_proto(layers, names, autonames)
            bottoms.append(layers[top.fn].top[top.n])
        layer = caffe_pb2.LayerParameter(type=self.type_name)
        layer.bottom.extend(bottoms)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            layer.top.extend(self._top_name(top, names, autonames) for top in self.tops)
        layer.name = self._name(names, autonames)
        for key, value in self.params.items():
            if key.endswith("param"):
                assign_proto(layer, key, value)
                continue
            try:
                assign_proto(getattr(layer, _PARAM_NAMES[self.type_name] + "_param"), key, value)
            except (AttributeError, KeyError):
                assign_proto(layer, key, value)
        layers[self] = layer


def to_proto(*tops: Top) -> caffe_pb2.NetParameter:
    """The NetParameter of every layer the given tops depend on (blob names made up)."""
    layers: OrderedDict = OrderedDict()
    autonames: Counter = Counter()
    for top in tops:
        top.fn._to_proto(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


class NetSpec:
    """Named tops, assigned as attributes (or items); `to_proto()` writes the layers that make them."""

    def __init__(self) -> None:
        object.__setattr__(self, "tops", OrderedDict())

    def __setattr__(self, name: str, value: Any) -> None:
        self.tops[name] = value

    def __getattr__(self, name: str) -> Any:
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setitem__(self, key: str, value: Any) -> None:
        self.__setattr__(key, value)

    def __getitem__(self, item: str) -> Any:
        return self.tops[item]

    def __delitem__(self, item: str) -> None:
        del self.tops[item]

    def keys(self) -> list[str]:
        return list(self.tops.keys())

    def to_proto(self) -> caffe_pb2.NetParameter:
        """The NetParameter of every assigned top's layers, named after the attributes."""
        names = {top: name for name, top in self.tops.items()}
        autonames: Counter = Counter()
        layers: OrderedDict = OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


class Layers:
    """`layers.<Type>(*bottoms, **fields)` makes a layer call; it returns its Top, its Tops, or itself (no top)."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def layer_fn(*args: Top, **kwargs: Any):
            fn = Function(name, args, kwargs)
            if fn.ntop == 0:
                return fn
            return fn.tops[0] if fn.ntop == 1 else fn.tops

        layer_fn.__name__ = name
        return layer_fn


class _Enums:
    def __init__(self, message: str) -> None:
        self._message = message

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(getattr(caffe_pb2, self._message + "Parameter"), name)


class Parameters:
    """`params.<Type>.<VALUE>`: an enum value of <Type>Parameter (`params.Pooling.MAX`)."""

    def __getattr__(self, name: str) -> _Enums:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Enums(name)


_PARAM_NAMES = param_name_dict()
layers = Layers()
params = Parameters()
