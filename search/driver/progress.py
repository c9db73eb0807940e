"""The live view of a search: trial counts, best so far, elapsed time and ETA; a summary table at the end."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

from optuna.trial import TrialState

from search.driver.study import is_feasible, ranked_trials

if TYPE_CHECKING:
    from search.driver.driver import Driver

__all__ = ["ProgressView"]


class ProgressView:
    """Trial counts, best so far, elapsed and ETA; a summary table when closed.

    On a terminal a live rich view; in a log (stderr is a file, a Ray job's log, CI) one line each time a trial
    finishes and at least every ``every`` seconds while none does (:meth:`line`)."""

    def __init__(self, driver: Driver, every: float = 300.0):
        from rich.console import Console
        from rich.live import Live

        self.driver = driver
        self.t0 = time.perf_counter()
        self.done0 = driver.finished_in_study()
        self.console = Console(stderr=True)
        self.every, self._said = every, (None, self.t0)
        self.live = None
        if self.console.is_terminal:
            self.live = Live(self._render(), console=self.console, auto_refresh=False, transient=True)
            self.live.start()

    def _counts(self) -> dict[str, int]:
        counts = {s.name.lower(): 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
        for t in self.driver.study.get_trials(deepcopy=False):
            if t.state.name.lower() in counts:
                counts[t.state.name.lower()] += 1
        counts["running"] = len(self.driver.running_trials())
        return counts

    def _best(self) -> tuple[str, str]:
        d = self.driver
        ranked = ranked_trials(d.study)
        if not ranked:
            return "-", "-"
        best = ranked[0]
        value = [round(v, 4) for v in best.values] if d.multi_objective else round(best.value, 4)
        if not is_feasible(best):
            value = f"{value} (no trial meets the constraints yet)"
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
        return f"#{best.number}: {value}", params

    def _eta(self) -> str:
        d = self.driver
        elapsed, done = time.perf_counter() - self.t0, d.finished_in_study() - self.done0
        return f"{elapsed / done * max(0, d.n_trials - d.finished_in_study()):.0f}s" if done else "?"

    def line(self) -> str:
        """The log line: ``search: 5/40 finished (complete 4, pruned 1, failed 0, running 2); best #3: 0.6123;
        elapsed 120s, ETA 840s``."""
        d, c = self.driver, self._counts()
        best, _ = self._best()
        return (f"search: {d.finished_in_study()}/{d.n_trials} finished (complete {c['complete']}, pruned "
                f"{c['pruned']}, failed {c['fail']}, running {c['running']}); best {best}; elapsed "
                f"{time.perf_counter() - self.t0:.0f}s, ETA {self._eta()}" + ("; stopping" if d.stopping else ""))

    def _render(self):
        from rich.table import Table

        d, c = self.driver, self._counts()
        elapsed, eta = time.perf_counter() - self.t0, self._eta()
        best, params = self._best()
        table = Table(title=f"merge-search: study {d.study.study_name}", show_header=False)
        table.add_row("trials", f"complete {c['complete']}  running {c['running']}  failed {c['fail']}  "
                                f"pruned {c['pruned']}  (target {d.n_trials} finished)")
        table.add_row("best", best)
        table.add_row("params", params)
        table.add_row("time", f"elapsed {elapsed:.0f}s  ETA {eta}"
                      + ("  [stopping: waiting for running trials]" if d.stopping else ""))
        return table

    def update(self) -> None:
        if self.live is not None:
            self.live.update(self._render(), refresh=True)
            return
        finished, now = self.driver.finished_in_study(), time.perf_counter()
        if finished != self._said[0] or now - self._said[1] >= self.every:
            print(self.line(), file=sys.stderr, flush=True)
            self._said = (finished, now)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
        elif self._said[0] != self.driver.finished_in_study():
            print(self.line(), file=sys.stderr, flush=True)  # the last count, then the summary table
        self.console.print(self.summary())

    def summary(self):
        from rich.table import Table

        r = self.driver.result
        table = Table(title="search summary")
        for col in ("complete", "pruned", "failed", "re-queued", "items evaluated", "busy", "wall", "best"):
            table.add_column(col)
        best, _ = self._best()
        table.add_row(str(r.complete), str(r.pruned), str(r.failed), str(r.requeued), str(r.items),
                      f"{r.busy_fraction:.0%}", f"{r.wall_seconds:.1f}s", best)
        return table
