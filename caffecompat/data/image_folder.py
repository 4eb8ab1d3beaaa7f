"""Image folders as data sets: one subfolder per class, as image data sets are shipped today.

    ROOT/cat/0001.jpg, ROOT/cat/more/0002.png, ROOT/dog/0003.jpg ...

Classes are the subfolders of ROOT, labelled 0, 1, ... in sorted name order
(or in the order of a given class list, to label a validation folder as its
training folder); a class's images are every image file below its folder,
in sorted path order. Names starting with '.' (.DS_Store, .ipynb_checkpoints)
are skipped, and so are files that are not images by their extension. The
result is a Caffe list (`class/file label` lines, paths relative to ROOT) and
a labels file (line i is the name of class i), what `convert-lmdb`,
`ImageData` layers and `classify -labels` read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from caffecompat.errors import CaffeCompatError
from caffecompat.formats.protofile import read_bytes

# Extensions OpenCV's imread decodes, lower-case.
IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "jpe", "png", "bmp", "dib", "ppm", "pgm", "pbm", "pnm", "tif",
                              "tiff", "webp", "jp2", "sr", "ras", "exr", "hdr", "pic"})


@dataclass
class ImageFolder:
    """What a scan found: class names (label = index), (relative path, label) items, skipped entries."""

    root: str
    classes: list[str]
    items: list[tuple[str, int]]
    skipped: list[str] = field(default_factory=list)  # top-level files and non-image files, relative to root

    def list_lines(self) -> list[tuple[str, int, int]]:
        """(path, label, line number) as listfile.read_list gives them."""
        return [(path, label, i + 1) for i, (path, label) in enumerate(self.items)]


def is_image(name: str) -> bool:
    """Whether a file name has an image extension OpenCV reads."""
    return os.path.splitext(name)[1][1:].lower() in IMAGE_EXTENSIONS


def read_classes(path: str) -> list[str]:
    """Class names from a labels file: one per line, blank lines ignored, no duplicates."""
    names = [line.strip() for line in read_bytes(path, "labels file").decode("utf-8", "surrogateescape").splitlines()]
    names = [n for n in names if n]
    if not names:
        raise CaffeCompatError(f"{path}: the labels file lists no class")
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise CaffeCompatError(f"{path}: class '{n}' is listed twice")
        seen.add(n)
    return names


def scan(root: str, classes_file: str | None = None) -> ImageFolder:
    """The classes and images below `root`; with `classes_file`, classes are labelled in its order."""
    if not os.path.isdir(root):
        what = "no such folder" if not os.path.exists(root) else "not a folder"
        raise CaffeCompatError(f"{root}: {what}; give a folder with one subfolder of images per class")
    entries = sorted(e for e in os.listdir(root) if not e.startswith("."))
    found = [e for e in entries if os.path.isdir(os.path.join(root, e))]
    skipped = [e for e in entries if e not in found]
    if classes_file:
        classes = read_classes(classes_file)
        unknown = [c for c in found if c not in classes]
        if unknown:
            raise CaffeCompatError(f"{root}: class folder(s) {', '.join(unknown)} are not listed in {classes_file}; "
                                   "add them to it or remove them")
    else:
        classes = found
    if not found:
        raise CaffeCompatError(f"{root}: has no class subfolders; an image folder has one subfolder of images per "
                               "class (ROOT/cat/1.jpg, ROOT/dog/2.jpg ...)")
    for c in classes:
        if "\n" in c or "\r" in c:
            raise CaffeCompatError(f"{root}: the class folder name {c!r} holds a line break; rename it")
    items: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        folder = os.path.join(root, name)
        if not os.path.isdir(folder):
            continue
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
            for f in sorted(filenames):
                if f.startswith("."):
                    continue
                rel = f"{rel_dir}/{f}"
                if "\n" in rel or "\r" in rel:
                    raise CaffeCompatError(f"{root}: the file name {rel!r} holds a line break; rename it")
                if is_image(f):
                    items.append((rel, label))
                else:
                    skipped.append(rel)
    if not items:
        raise CaffeCompatError(f"{root}: no image files in its class folders ({', '.join(found)}); image files "
                               f"have one of the extensions {', '.join(sorted(IMAGE_EXTENSIONS))}")
    return ImageFolder(root, classes, items, skipped)


def list_text(items: list[tuple[str, int]]) -> str:
    """A Caffe list file's text: `path label` lines."""
    return "".join(f"{path} {label}\n" for path, label in items)


def labels_text(classes: list[str]) -> str:
    """A labels file's text: class i on line i."""
    return "".join(f"{c}\n" for c in classes)


def write_labels(path: str, classes: list[str]) -> bool:
    """Write the labels file; returns False when an identical one is already there (left as it is).

    A labels file with other classes is not overwritten: the error names the
    flags that fix it.
    """
    from caffecompat import outfiles

    text = labels_text(classes)
    if os.path.exists(path):
        if os.path.isfile(path):
            try:
                existing = read_classes(path)
            except CaffeCompatError:
                existing = None
            if existing == classes:
                return False
        raise CaffeCompatError(
            f"{path}: a labels file with other classes is already there; pass -classes {path} to label the "
            "folders in its order, or -labels_file OTHER to write elsewhere"
        )
    outfiles.write_atomic(path, text.encode("utf-8", "surrogateescape"), "labels file")
    return True
