"""Running a `caffecompat` command in-process, as the tests do, with what it logs captured."""

from __future__ import annotations

import io

from caffecompat import glog
from caffecompat.cli import main


def run_cli(args: list[str]) -> tuple[int, str]:
    """`caffecompat ARGS`: its exit status and its glog output."""
    stream = io.StringIO()
    glog.set_stream(stream)
    try:
        return main(args), stream.getvalue()
    finally:
        glog.set_stream(None)
