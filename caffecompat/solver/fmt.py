"""Numbers formatted as C++ `std::ostream << x` prints them in Caffe's log lines.

A default-configured ostream prints float and double like printf's `%g` with
6 significant digits: `0.01`, `1e-05`, `0.000948517`, `2.32056`, `inf`.
"""

from __future__ import annotations

import math


def caffe_float(x: float) -> str:
    """`x` as `std::cout << x` prints it (default precision 6, %g style)."""
    x = float(x)
    if math.isnan(x):
        # glibc prints the sign of a NaN ("-nan"); Python's %g never does.
        return "-nan" if math.copysign(1.0, x) < 0 else "nan"
    return f"{x:.6g}"
