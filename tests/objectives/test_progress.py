"""objectives.progress: tqdm on a terminal, whole lines (no carriage returns) in a log."""

from __future__ import annotations

import io

from objectives.progress import LineProgress, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_whole_lines_the_first_and_the_final_count_and_the_postfix():
    log = io.StringIO()
    with progress_bar(total=40, desc="DPO", unit="step", every=3600, file=log) as bar:
        assert isinstance(bar, LineProgress)
        for _ in range(40):
            bar.update(1)
            bar.set_postfix(loss="0.6931")
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 2  # within `every` seconds: the start and the end only
    assert lines[0].startswith("DPO: 0/40 step (0%)") and lines[1].startswith("DPO: 40/40 step (100%)")
    assert lines[1].endswith("loss=0.6931")


def test_an_iterable_is_counted_and_every_interval_gives_a_line():
    log = io.StringIO()
    assert list(progress_bar(range(5), desc="models", unit="model", every=0, file=log)) == list(range(5))
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("models: 0/5") and lines[-1].startswith("models: 5/5 model (100%)")
    assert len(lines) == 6 and "\r" not in log.getvalue()


def test_disabled_writes_nothing_and_a_terminal_gets_tqdm():
    log = io.StringIO()
    with progress_bar(total=3, desc="judge", disable=True, file=log) as bar:
        bar.update(3)
    assert log.getvalue() == ""
    tty = _Terminal()
    with progress_bar(total=3, desc="judge", file=tty) as bar:
        bar.update(3)
    assert not isinstance(bar, LineProgress) and "\r" in tty.getvalue()
