"""The inputs a runtime feeds a graph besides blobs and weights: Dropout masks drawn per pass, carried states.

A FedInput with `carry` is a state kept between passes (Caffe's RecurrentLayer
without expose_hidden starts each Forward from the previous one's h_T/c_T): the
runtime feeds the value its `carry` output had after the previous forward, and
zeros (its draw) before the first or when the shape changed.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from caffecompat.layers.graph import FedInput


def draw_fed_inputs(fed_inputs: Mapping[str, FedInput], carried: Mapping[str, np.ndarray],
                    rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One pass's value of every fed input (`fed_value` of each, in order)."""
    return {name: fed_value(name, fed, carried, rng) for name, fed in fed_inputs.items()}


def fed_value(name: str, fed: FedInput, carried: Mapping[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """One pass's value of fed input `name`: its carried state where there is one, else a fresh draw."""
    kept = carried.get(name) if fed.carry else None
    if kept is not None and kept.shape == tuple(fed.shape):
        return kept
    return np.ascontiguousarray(fed.draw(rng), dtype=fed.dtype)


def keep_carried(fed_inputs: Mapping[str, FedInput], carried: dict[str, np.ndarray],
                 outputs: Mapping[str, np.ndarray]) -> None:
    """After a forward: remember each carried input's next value from the pass's outputs."""
    for name, fed in fed_inputs.items():
        if fed.carry and fed.carry in outputs:
            carried[name] = np.array(outputs[fed.carry], np.float32)
