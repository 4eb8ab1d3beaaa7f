"""`caffecompat plot LOG... -o FILE`: training curves from Caffe training logs (ours or Caffe's).

One panel holds the losses (the displayed train loss of each log, solid, and
each test net's loss outputs, dashed with markers); one more panel per other
test output (accuracy, accuracy_top3, ...); `-lr` adds the learning rate.
Several logs share the panels, one colour per log. The x axis is iterations
or seconds since `Solving` (`-x seconds`); `-smooth N` draws the train loss
as a trailing mean over N displays beside its faint raw curve. The format
follows the file name: .png, .svg or .pdf. Drawing needs matplotlib (the
`plot` extra); it runs headless (Agg), no display needed.
"""

from __future__ import annotations

import argparse
import io
import threading
import time
from pathlib import Path

from caffecompat import glog, outfiles
from caffecompat.commands.common import flag
from caffecompat.errors import CaffeCompatError
from caffecompat.traininglog import LogReader, Series, TrainingLog, read_log

FORMATS = ("png", "svg", "pdf")
INSTALL_HINT = "pip install 'caffecompat[plot]' (or pip install 'matplotlib>=3.7')"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `plot` subcommand."""
    p = sub.add_parser("plot", help="plot training curves from training logs (PNG, SVG or PDF)",
                       description="Plot the train loss, the test losses and every other test output of one or "
                                   "more training logs (caffecompat's or Caffe's) against iterations or seconds. "
                                   "Needs matplotlib: " + INSTALL_HINT + ".")
    p.add_argument("logs", metavar="LOG", nargs="+", help="training logs; several are drawn on the same panels")
    p.add_argument("-o", "--output", "-output", dest="output", required=True, metavar="FILE",
                   help="the figure: .png, .svg or .pdf")
    add_figure_flags(p)
    p.set_defaults(func=run)


def add_figure_flags(p: argparse.ArgumentParser) -> None:
    """-x, -smooth, -lr, -width, -height, -dpi, -title (shared with `train -plot`)."""
    p.add_argument("-x", "--x", dest="x_axis", default="iters", choices=["iters", "seconds"],
         help="the x axis: iterations (default) or seconds since Solving")
    flag(p, "smooth", type=int, default=1, metavar="N",
         help="draw the train loss as a trailing mean over N displayed values (default 1: unsmoothed)")
    p.add_argument("-lr", "--lr", dest="show_lr", action="store_true", help="add a panel with the learning rate")
    flag(p, "width", type=int, default=1000, metavar="PX", help="figure width in pixels (default 1000)")
    flag(p, "height", type=int, default=0, metavar="PX",
         help="figure height in pixels (default 300 per panel, at least 500)")
    flag(p, "dpi", type=int, default=100, help="dots per inch (default 100)")
    flag(p, "title", default="", help="the figure's title")


class Options:
    """What a figure shows and how big it is."""

    def __init__(self, x_axis: str = "iters", smooth: int = 1, show_lr: bool = False, width: int = 1000,
                 height: int = 0, dpi: int = 100, title: str = "") -> None:
        if smooth < 1:
            raise CaffeCompatError(f"-smooth {smooth}: must be at least 1")
        if width < 50 or height and height < 50 or width > 20000 or height > 20000:
            raise CaffeCompatError(f"-width {width} -height {height}: sizes must be 50 to 20000 pixels")
        if dpi < 10:
            raise CaffeCompatError(f"-dpi {dpi}: must be at least 10")
        self.x_axis, self.smooth, self.show_lr = x_axis, smooth, show_lr
        self.width, self.height, self.dpi, self.title = width, height, dpi, title

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        """The options given on the command line."""
        return cls(args.x_axis, args.smooth, args.show_lr, args.width, args.height, args.dpi, args.title)


def figure_format(path: str) -> str:
    """The output format named by the file's extension, or an error listing those supported."""
    ext = Path(path).suffix.lower().lstrip(".")
    if ext not in FORMATS:
        raise CaffeCompatError(f"{path}: unknown figure format '.{ext}'; name the file .png, .svg or .pdf")
    return ext


def need_matplotlib(who: str) -> None:
    """An error saying how to install matplotlib when it is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CaffeCompatError(f"{who} needs matplotlib, which is not installed: {INSTALL_HINT}") from None


def trailing_mean(values: list[float], n: int) -> list[float]:
    """Each value replaced by the mean of it and the n-1 before it (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= n:
            total -= values[i - n]
        out.append(total / min(i + 1, n))
    return out


def _xs(series: Series, options: Options) -> list[float]:
    return list(series.seconds) if options.x_axis == "seconds" else [float(i) for i in series.iters]


def build_figure(logs: list[tuple[str, TrainingLog]], options: Options):
    """A matplotlib Figure (not attached to pyplot) with the curves of `logs` ((label, log) pairs)."""
    from matplotlib.figure import Figure

    metrics: list[str] = []  # non-loss test outputs, in first-seen order
    for _, log in logs:
        for outputs in log.test_outputs.values():
            for name, s in outputs.items():
                if not s.is_loss and name not in metrics:
                    metrics.append(name)
    panels = ["loss", *metrics] + (["lr"] if options.show_lr else [])
    height = options.height or max(500, 300 * len(panels))
    # Agg truncates width * dpi to whole pixels: a tenth of a pixel more gives exactly the size asked.
    fig = Figure(figsize=((options.width + 0.1) / options.dpi, (height + 0.1) / options.dpi), dpi=options.dpi,
                 layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    ax_of = dict(zip(panels, axes))
    colors = [f"C{i % 10}" for i in range(len(logs))]
    many_nets = any(len(log.test_outputs) > 1 for _, log in logs)
    for (label, log), color in zip(logs, colors):
        ax = ax_of["loss"]
        if len(log.loss):
            x = _xs(log.loss, options)
            if options.smooth > 1:
                ax.plot(x, log.loss.values, color=color, alpha=0.25, linewidth=1, label=f"{label} train (raw)")
                ax.plot(x, trailing_mean(log.loss.values, options.smooth), color=color, linewidth=1.5,
                        label=f"{label} train (mean of {options.smooth})")
            else:
                ax.plot(x, log.loss.values, color=color, linewidth=1.5, label=f"{label} train")
        for net, outputs in sorted(log.test_outputs.items()):
            tag = f"test#{net}" if many_nets else "test"
            for name, s in outputs.items():
                if not len(s):
                    continue
                target = ax_of["loss"] if s.is_loss else ax_of[name]
                target.plot(_xs(s, options), s.values, color=color, linestyle="--", marker="o", markersize=3,
                            linewidth=1.2, label=f"{label} {tag} {name}")
        if options.show_lr and len(log.lr):
            ax_of["lr"].plot(_xs(log.lr, options), log.lr.values, color=color, linewidth=1.2, label=label)
    for name, ax in ax_of.items():
        ax.set_ylabel({"loss": "loss", "lr": "learning rate"}.get(name, name))
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small", loc="best")
    if options.show_lr and all(v > 0 for _, log in logs for v in log.lr.values) and ax_of["lr"].lines:
        ax_of["lr"].set_yscale("log")
    axes[-1].set_xlabel("seconds since Solving" if options.x_axis == "seconds" else "iterations")
    if options.title:
        fig.suptitle(options.title)
    return fig


def save_figure(fig, path: str) -> None:
    """Write the figure to `path` in the format its extension names, atomically."""
    fmt = figure_format(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=fig.dpi)
    outfiles.write_atomic(path, buf.getvalue(), "figure")


def _labels(paths: list[str]) -> list[str]:
    stems = [Path(p).name for p in paths]
    return stems if len(set(stems)) == len(stems) else [str(p) for p in paths]


def run(args: argparse.Namespace) -> int:
    """Read the logs and draw them."""
    figure_format(args.output)
    options = Options.from_args(args)
    need_matplotlib("caffecompat plot")
    logs = [(label, read_log(path)) for label, path in zip(_labels(args.logs), args.logs)]
    for (_, log), path in zip(logs, args.logs):
        if log.empty():
            raise CaffeCompatError(f"{path}: no training iterations or test outputs found; is it a training log "
                                   "(`caffe train` or `caffecompat train` output)?")
    outfiles.check_writable(args.output, "figure")
    save_figure(build_figure(logs, options), args.output)
    glog.info("plot.py:1", f"Wrote {args.output}")
    return 0


class LivePlot:
    """`train -plot FILE`: the curves of the lines being logged, redrawn now and then while training.

    Redrawn at most every `interval` seconds and never more often than 20 times the last drawing's
    duration (so drawing takes at most 5% of the run), and once more at the end.
    """

    def __init__(self, path: str, options: Options, label: str, interval: float = 10.0) -> None:
        figure_format(path)
        need_matplotlib("train -plot")
        outfiles.check_writable(path, "figure")
        self.path, self.options, self.label, self.interval = path, options, label, interval
        self.reader = LogReader()
        self.last_draw = time.monotonic()
        self.draw_seconds = 0.0
        self.points = 0
        self.drawn_points = 0
        self.draws = 0
        self.failed = False
        self._lock = threading.Lock()
        self._thread = threading.get_ident()  # draws happen in the training thread, never in a data thread

    def __call__(self, severity: str, line: str) -> None:
        """A glog listener: read the line; redraw when due."""
        with self._lock:
            self.reader.feed(line)
            log = self.reader.log
            self.points = len(log.loss) + sum(len(s) for n in log.test_outputs.values() for s in n.values())
        now = time.monotonic()
        due = now - self.last_draw >= max(self.interval, 20 * self.draw_seconds)
        if due and self.points > self.drawn_points and threading.get_ident() == self._thread:
            self._draw_or_warn()

    def _draw_or_warn(self) -> None:
        # A figure that cannot be written (disk full, ...) never stops the training: one warning, no more draws.
        if self.failed:
            return
        try:
            self.draw()
        except (CaffeCompatError, OSError, ValueError) as e:
            self.failed = True
            glog.warning("plot.py:1", f"-plot {self.path}: cannot draw the training curves ({e}); training goes on "
                                      "without them")

    def draw(self) -> None:
        """Redraw the figure now (when there is anything to draw)."""
        if self.reader.log.empty():
            return
        start = time.monotonic()
        with self._lock:
            fig = build_figure([(self.label, self.reader.log)], self.options)
        save_figure(fig, self.path)
        self.last_draw = time.monotonic()
        self.draw_seconds = self.last_draw - start
        self.drawn_points = self.points
        self.draws += 1

    def start(self) -> None:
        """Listen to the log lines from now on."""
        glog.add_listener(self)

    def finish(self) -> None:
        """Stop listening and draw the final curves."""
        glog.remove_listener(self)
        if self.points > self.drawn_points or not self.draws:
            self._draw_or_warn()
