"""Progress bars that suit where they are read: tqdm's redrawn bar on a terminal, whole lines in a log.

A cluster job's stderr is a file (``> run.log``, a Ray job's log, CI): a redrawn bar there is one endless line
of carriage returns, and a bar switched off says nothing for hours. :func:`progress_bar` gives tqdm on a terminal
and otherwise a :class:`LineProgress`, which writes one ordinary line at most every ``every`` seconds and a last
one when it closes, e.g. ``judge: 120/480 (25%), 1:02 elapsed, 3:05 left, loss=0.6931``.
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm as _auto_tqdm
from tqdm.std import tqdm as _std_tqdm

__all__ = ["LINE_FORMAT", "LineProgress", "progress_bar"]

LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%), {elapsed} elapsed, {remaining} left{postfix}"


class LineProgress(_std_tqdm):
    """A tqdm that writes whole lines (for logs): one when it starts, at most one per ``mininterval`` seconds
    while it runs, and the final count when it closes."""

    def __init__(self, *args, every: float = 30.0, **kwargs):
        kwargs.setdefault("bar_format", LINE_FORMAT if kwargs.get("total") is not None else None)
        self._last = None
        super().__init__(*args, mininterval=every, maxinterval=every, miniters=1, dynamic_ncols=False, **kwargs)

    def display(self, msg=None, pos=None):  # tqdm's one output hook: a line instead of a redraw
        text = (self.__str__() if msg is None else msg).strip()
        if not text:
            return False  # tqdm's clearing of a bar: nothing to clear in a log (and no carriage return)
        if text != self._last:
            self.fp.write(text + "\n")
            self.fp.flush()
            self._last = text
        return True

    # shown with the next line, not one line more each
    def set_postfix(self, ordered_dict=None, refresh=False, **kwargs):
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_postfix_str(self, s="", refresh=False):
        super().set_postfix_str(s, refresh=False)

    def set_description(self, desc=None, refresh=False):
        super().set_description(desc, refresh=False)

    def clear(self, nolock=False):  # tqdm.write clears bars first: a log has nothing to clear
        pass

    def close(self):
        if not self.disable and self.last_print_n != self.n:
            self.display()  # the final count, also when the last update came within ``every`` seconds
        self.leave = False  # tqdm's clean-up would write an empty redraw
        super().close()


def progress_bar(iterable=None, *, total: int | None = None, desc: str, unit: str = "it", disable: bool = False,
                 every: float = 30.0, file=None):
    """tqdm on a terminal (``file``, default stderr), else :class:`LineProgress` writing a line at most every
    ``every`` seconds; ``disable`` shows nothing. Use it as tqdm (iterate, ``update``, ``set_postfix``,
    ``close`` or ``with``)."""
    out = file or sys.stderr
    if disable:
        return _std_tqdm(iterable, total=total, desc=desc, unit=unit, disable=True, file=out)
    if getattr(out, "isatty", lambda: False)():
        return _auto_tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, file=out)
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, every=every, file=out)
