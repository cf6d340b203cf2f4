"""Progress that reads well in log files: tqdm on a terminal, one plain line per interval otherwise.

:func:`progress` is a tqdm bar for loops (data generation, evaluation, judging): the usual bar on a TTY; in a
log file (not a TTY) one line per ``interval`` seconds, without carriage returns, with rate and ETA. The
trainers' progress lines are :class:`grpo_vqa.training.progress.LogProgress`.
"""

from __future__ import annotations

import sys

from tqdm import tqdm


def is_tty(stream=None) -> bool:
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class _Lines:
    """A file for tqdm that writes each refresh as one plain line (carriage returns dropped)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, s: str) -> None:
        s = s.replace("\r", "").strip()
        if s:
            self.stream.write(s + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(
    iterable=None, *, total: int | None = None, desc: str = "", interval: float = 30.0, stream=None, **kw
):
    """``tqdm(iterable, total=..., desc=...)``: a live bar on a terminal; on a log file one line per
    ``interval`` seconds (plus the first and the last), e.g. ``eval test:  50%|#####     | 32/64 [00:10<00:10,
    3.1it/s]`` — the part in brackets is elapsed<ETA."""
    stream = stream if stream is not None else sys.stderr
    if is_tty(stream):
        return tqdm(iterable, total=total, desc=desc, file=stream, **kw)
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        file=_Lines(stream),
        mininterval=interval,
        maxinterval=max(interval, 10.0 * interval),
        ascii=True,
        ncols=80,
        dynamic_ncols=False,
        **kw,
    )


def format_seconds(s: float) -> str:
    s = int(round(max(0.0, s)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"
