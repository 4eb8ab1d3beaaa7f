"""Reading Caffe training logs: ours and the original Caffe's, with either glog date form.

glog lines start `I1121 22:19:17.387677` (glog before 0.6: month and day) or
`I20261121 22:19:17.387677` (newer glog: the year too). Both are read here.

- `parse_log` / `write_csv`: what Caffe's tools/extra/parse_log.py computes and
  writes (the `.train` and `.test` CSV files), rule for rule, so scripts built
  on those files keep working. Its one failure is not kept: parse_log.py
  cannot read the year-ful date form.
- `LogReader` / `read_log`: the curves `caffecompat plot` draws: the displayed
  train loss, the learning rate, train net outputs and every test net's
  outputs, against iterations and seconds since `Solving`. It reads line by
  line, so `train -plot` feeds it the lines as they are logged.
"""

from __future__ import annotations

import csv
import datetime
import math
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from caffecompat.errors import CaffeCompatError

_STAMP = re.compile(r"^\s*[IWEF](\d{8}|\d{4}) (\d{1,2}):(\d{2}):(\d{2})\.(\d+)\s")


def line_time(line: str, year: int) -> datetime.datetime | None:
    """The time stamp of a glog line (`year` for the month-day form), or None for a line without one."""
    m = _STAMP.match(line)
    if m is None:
        return None
    date = m[1]
    if len(date) == 8:
        year, month, day = int(date[:4]), int(date[4:6]), int(date[6:])
    else:
        month, day = int(date[:2]), int(date[2:])
    try:
        return datetime.datetime(year, month, day, int(m[2]), int(m[3]), int(m[4]), int(m[5]))
    except ValueError:
        return None


def _has_year(line: str) -> bool:
    m = _STAMP.match(line)
    return m is not None and len(m[1]) == 8


def file_year(path: str | os.PathLike) -> int:
    """The year the log file was created (its ctime), for the month-day date form, as parse_log.py takes it."""
    return datetime.datetime.fromtimestamp(os.path.getctime(path)).year


def _read_lines(path: str | os.PathLike) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        raise CaffeCompatError(f"{path}: no such log file") from None
    except IsADirectoryError:
        raise CaffeCompatError(f"{path}: is a folder, not a log file") from None


# -- parse_log.py ---------------------------------------------------------------------------------------------

_ITERATION = re.compile(r"Iteration (\d+)")
_TRAIN_OUTPUT = re.compile(r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)")
_TEST_OUTPUT = re.compile(r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)")
_LEARNING_RATE = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")

Row = "OrderedDict[str, float]"


def parse_log(path: str | os.PathLike) -> tuple[list[Row], list[Row]]:
    """(train rows, test rows) as Caffe's parse_log.py computes them from the log at `path`.

    Each row is NumIters, Seconds (since the first line saying `Solving`), LearningRate (the last
    `lr = ` seen), then one column per net output of that iteration.
    """
    lines = _read_lines(path)
    year = file_year(path)
    # parse_log.py's clock starts at the first line that says "Solving"; lines before it are never read.
    start = None
    rest: list[str] = []
    for k, line in enumerate(lines):
        if "Solving" in line:
            start = line_time(line.strip(), year)
            if start is not None:
                rest = lines[k + 1:]
                break
    if start is None:
        return [], []
    iteration = -1.0
    learning_rate = float("nan")
    train: list[Row] = []
    test: list[Row] = []
    train_row: Row | None = None
    test_row: Row | None = None
    last = start
    for line in rest:
        m = _ITERATION.search(line)
        if m:
            iteration = float(m[1])
        if iteration == -1:
            continue  # nothing counts before the first "Iteration N"
        time = line_time(line.strip(), year)
        if time is None:
            continue  # not a glog line (a continuation line)
        if not _has_year(line) and time.month < last.month:
            # the month went back: the log crossed into the next year
            year += 1
            time = line_time(line.strip(), year)
        last = time
        seconds = (time - start).total_seconds()
        m = _LEARNING_RATE.search(line)
        if m:
            learning_rate = float(m[1])
        train_row = _net_output(_TRAIN_OUTPUT, train_row, train, line, iteration, seconds, learning_rate)
        test_row = _net_output(_TEST_OUTPUT, test_row, test, line, iteration, seconds, learning_rate)
    for rows in (train, test):
        # The first rows come before any "lr = " line: they take the second row's rate.
        if len(rows) > 1:
            rows[0]["LearningRate"] = rows[1]["LearningRate"]
    return train, test


def _net_output(regex: re.Pattern, row: Row | None, rows: list[Row], line: str, iteration: float,
                seconds: float, learning_rate: float) -> Row | None:
    # parse_log.py's row rule: an output of a new iteration starts a row (pushing the open one);
    # a row is pushed as soon as it has as many columns as the first row pushed.
    m = regex.search(line)
    if m:
        if row is None or row["NumIters"] != iteration:
            if row is not None:
                rows.append(row)
            row = OrderedDict([("NumIters", iteration), ("Seconds", seconds), ("LearningRate", learning_rate)])
        row[m[2]] = float(m[3])
    if row is not None and rows and len(row) == len(rows[0]):
        rows.append(row)
        row = None
    return row


def write_csv(path: str | os.PathLike, rows: list[Row], delimiter: str = ",") -> bool:
    """parse_log.py's CSV file (Excel dialect, the first row's columns); False (no file) when there are no rows."""
    if not rows:
        return False
    from caffecompat import outfiles

    header = list(rows[0])
    for i, row in enumerate(rows):
        extra = [k for k in row if k not in header]
        if extra:
            raise CaffeCompatError(f"{path}: row {i + 1} (iteration {row['NumIters']:g}) has outputs {extra} that "
                                   f"the first row lacks ({header}); parse_log.py cannot write such a log either")
    lines = []

    class _Sink:
        def write(self, text: str) -> None:
            lines.append(text)

    writer = csv.DictWriter(_Sink(), fieldnames=header, dialect=csv.excel, delimiter=delimiter)
    writer.writeheader()
    writer.writerows(rows)
    outfiles.write_atomic(path, "".join(lines).encode("utf-8"), "CSV file")
    return True


# -- curves for plots -----------------------------------------------------------------------------------------

_DISPLAY = re.compile(r"\] Iteration (\d+)(?: \([^)]*\))?, loss = (\S+)")
_LR = re.compile(r"\] Iteration (\d+), lr = (\S+)")
_TESTING = re.compile(r"\] Iteration (\d+), Testing net \(#(\d+)\)")
_OUTPUT = re.compile(r"\]\s+(Train|Test) net output #\d+: (\S+) = (\S+)( \(\* \S+ = \S+ loss\))?")
_TEST_LOSS = re.compile(r"\] Test loss: (\S+)")


@dataclass
class Series:
    """One curve: (iteration, seconds, value) points in log order."""

    iters: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    is_loss: bool = False

    def add(self, iteration: int, seconds: float, value: float) -> None:
        """Append a point."""
        self.iters.append(iteration)
        self.seconds.append(seconds)
        self.values.append(value)

    def __len__(self) -> int:
        return len(self.values)


@dataclass
class TrainingLog:
    """The curves of one training log."""

    loss: Series = field(default_factory=lambda: Series(is_loss=True))  # the displayed (smoothed) train loss
    lr: Series = field(default_factory=Series)
    train_outputs: dict[str, Series] = field(default_factory=dict)
    test_outputs: dict[int, dict[str, Series]] = field(default_factory=dict)  # test net -> output -> curve

    def empty(self) -> bool:
        """Whether the log holds no point at all."""
        return not (len(self.loss) or any(len(s) for n in self.test_outputs.values() for s in n.values()))


def _number(text: str) -> float | None:
    try:
        return float(text)  # "nan", "-nan" and "inf" as C++ prints them read too
    except ValueError:
        return None


class LogReader:
    """Builds a TrainingLog from glog lines fed one at a time (a file, or lines as they are logged)."""

    def __init__(self, year: int | None = None) -> None:
        self.log = TrainingLog()
        self.year = datetime.date.today().year if year is None else year
        self.start: datetime.datetime | None = None
        self._first: datetime.datetime | None = None
        self._last: datetime.datetime | None = None
        self._testing: tuple[int, int] | None = None  # (iteration, test net) of the outputs being read

    def _seconds(self, line: str) -> float:
        time = line_time(line, self.year)
        if time is None:
            return math.nan
        if not _has_year(line) and self._last is not None and time.month < self._last.month:
            self.year += 1
            time = line_time(line, self.year)
        self._last = time
        if self._first is None:
            self._first = time
        # Seconds count from the first "Solving" line (parse_log.py's origin), else from the first line.
        origin = self.start or self._first
        return (time - origin).total_seconds()

    def feed(self, line: str) -> None:
        """Read one line."""
        if "]" not in line:
            return
        if self.start is None and "Solving" in line:
            self.start = line_time(line, self.year)
        if m := _TESTING.search(line):
            self._testing = (int(m[1]), int(m[2]))
            self.log.test_outputs.setdefault(int(m[2]), {})
            self._seconds(line)
        elif m := _DISPLAY.search(line):
            value = _number(m[2])
            self._testing = None
            if value is not None:
                self.log.loss.add(int(m[1]), self._seconds(line), value)
        elif m := _LR.search(line):
            value = _number(m[2])
            if value is not None:
                self.log.lr.add(int(m[1]), self._seconds(line), value)
        elif m := _OUTPUT.search(line):
            value = _number(m[3])
            if value is None:
                return
            seconds = self._seconds(line)
            if m[1] == "Test" and self._testing is not None:
                it, net = self._testing
                series = self.log.test_outputs[net].setdefault(m[2], Series(is_loss=bool(m[4])))
                series.add(it, seconds, value)
            elif m[1] == "Train" and len(self.log.loss):
                series = self.log.train_outputs.setdefault(m[2], Series(is_loss=bool(m[4])))
                series.add(self.log.loss.iters[-1], seconds, value)
        elif (m := _TEST_LOSS.search(line)) and self._testing is not None:
            value = _number(m[1])
            if value is not None:
                it, net = self._testing
                series = self.log.test_outputs[net].setdefault("Test loss", Series(is_loss=True))
                series.add(it, self._seconds(line), value)


def read_log(path: str | os.PathLike) -> TrainingLog:
    """The curves of the training log at `path`."""
    reader = LogReader(file_year(path) if Path(path).exists() else None)
    for line in _read_lines(path):
        reader.feed(line)
    return reader.log
