"""Opt-in `import caffe`: an alias package that makes scripts written for pycaffe import caffecompat.

    python -m caffecompat.shim install      # writes <site-packages>/caffe/ into this environment
    python -m caffecompat.shim status
    python -m caffecompat.shim uninstall

After `install`, `import caffe`, `import caffe.io`, `from caffe import layers as
L, params as P` and `from caffe.proto import caffe_pb2` give caffecompat's
modules (the same module objects, so nothing is loaded twice). Nothing is
written unless asked, and `install` refuses when a real Caffe is importable as
`caffe` (or its folder is in the way): it never shadows one. Without the alias,
write `import caffecompat as caffe`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.abc
import importlib.util
import shutil
import sys
import sysconfig
from pathlib import Path

MARKER = "__caffecompat_shim__"
_INIT = f'''"""`import caffe` gives caffecompat: pycaffe's API on ONNX Runtime ({MARKER}).

Written by `python -m caffecompat.shim install`; `python -m caffecompat.shim uninstall` removes it.
"""

from caffecompat.shim import alias as _alias

_alias()
'''


class _AliasLoader(importlib.abc.Loader):
    """Loads `caffe.X` as the already imported (or now imported) module `caffecompat.X`."""

    def __init__(self, real: str) -> None:
        self.real = real

    def create_module(self, spec):
        return importlib.import_module(self.real)

    def exec_module(self, module) -> None:
        pass


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Finds every `caffe.X` as `caffecompat.X`."""

    def find_spec(self, fullname: str, path=None, target=None):
        if not fullname.startswith("caffe."):
            return None
        real = "caffecompat." + fullname[len("caffe."):]
        if importlib.util.find_spec(real) is None:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(real))


def alias() -> None:
    """Make `caffe` and its submodules the caffecompat modules (called by the alias package)."""
    import caffecompat

    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())
    sys.modules["caffe"] = caffecompat


def _site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def _is_shim(folder: Path) -> bool:
    init = folder / "__init__.py"
    return init.is_file() and MARKER in init.read_text(errors="replace")


def _found_caffe() -> Path | None:
    """Where `import caffe` would load from now (None when nothing provides it)."""
    spec = importlib.util.find_spec("caffe") if "caffe" not in sys.modules else sys.modules["caffe"].__spec__
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def install(target: Path | None = None) -> Path:
    """Write the alias package into `target` (default: this environment's site-packages)."""
    from caffecompat.errors import CaffeCompatError

    target = Path(target) if target is not None else _site_packages()
    folder = target / "caffe"
    found = _found_caffe()
    if found is not None and not _is_shim(found):
        raise CaffeCompatError(f"a Caffe is already importable as 'caffe' from {found}; not shadowing it: use "
                               "`import caffecompat as caffe`, or install the alias in another environment")
    if folder.exists() and not _is_shim(folder):
        raise CaffeCompatError(f"{folder} exists and is not caffecompat's alias; not replacing it")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "__init__.py").write_text(_INIT)
    return folder


def uninstall(target: Path | None = None) -> Path | None:
    """Remove the alias package from `target` (default: site-packages); returns what was removed."""
    from caffecompat.errors import CaffeCompatError

    folder = (Path(target) if target is not None else _site_packages()) / "caffe"
    if not folder.exists():
        return None
    if not _is_shim(folder):
        raise CaffeCompatError(f"{folder} is not caffecompat's alias (a real Caffe?); not removing it")
    shutil.rmtree(folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    """python -m caffecompat.shim install|uninstall|status [--target DIR]."""
    from caffecompat.errors import CaffeCompatError

    parser = argparse.ArgumentParser(prog="python -m caffecompat.shim",
                                     description="Make `import caffe` load caffecompat (opt-in, per environment).")
    parser.add_argument("action", choices=["install", "uninstall", "status"])
    parser.add_argument("--target", default=None, help="the folder to write into (default: this environment's "
                        f"site-packages, {_site_packages()})")
    args = parser.parse_args(argv)
    try:
        if args.action == "install":
            print(f"installed: import caffe now loads caffecompat ({install(args.target)})")
        elif args.action == "uninstall":
            removed = uninstall(args.target)
            print(f"removed {removed}" if removed else "no alias installed there")
        else:
            found = _found_caffe()
            if found is None:
                print("no module named caffe: run `python -m caffecompat.shim install`")
            else:
                print(f"caffe is {'caffecompat (alias at ' if _is_shim(found) else 'a real Caffe ('}{found})")
    except CaffeCompatError as e:
        print(f"caffecompat.shim: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
