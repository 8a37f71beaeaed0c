"""What a person sees while a job runs: images done / total, rate, ETA and ok / error counts.

On a terminal a live rich bar (typer already brings rich); anywhere else (a cluster job's log, a pipe) one
plain line every `every_s` seconds, so logs stay readable. The counts come from what the driver already
receives; nothing here imports Ray.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import IO

DEFAULT_EVERY_S = 20.0  # plain-line period when stderr is not a terminal


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "n/a"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {s:02d}s" if m else f"{s}s"


class Progress:
    """Counts images for one job; `start(total)` once, `update(ok, error)` per finished batch, `close()`.

    Rate and ETA count only this run's images: `skipped` (done by an earlier run) is shown, not timed.
    """

    def __init__(
        self,
        label: str,
        *,
        stream: IO[str] | None = None,
        live: bool | None = None,
        every_s: float = DEFAULT_EVERY_S,
        unit: str = "images",
    ):
        from rich.console import Console

        self.label, self.unit, self.every_s = label, unit, every_s
        self.console = Console(file=stream or sys.stderr, highlight=False)
        self.live = (self.console.is_terminal and not self.console.is_dumb_terminal) if live is None else live
        self.total: int | None = None
        self.skipped = self.ok = self.error = 0
        self._t0 = time.monotonic()
        self._bar = None
        self._task = None
        self._ticker: threading.Thread | None = None
        self._stopped = threading.Event()
        self._lock = threading.Lock()

    # -- counts ------------------------------------------------------------------------------------------
    @property
    def done(self) -> int:
        return self.skipped + self.ok + self.error

    def rate(self) -> float:
        elapsed = time.monotonic() - self._t0
        return (self.ok + self.error) / elapsed if elapsed > 0 else 0.0

    def eta_s(self) -> float | None:
        rate = self.rate()
        if self.total is None or rate <= 0:
            return None
        return max(0, self.total - self.done) / rate

    def line(self) -> str:
        total = f"{self.total:,}" if self.total is not None else "?"
        pct = f" ({100 * self.done / self.total:.1f} %)" if self.total else ""
        skipped = f", {self.skipped:,} done before" if self.skipped else ""
        return (
            f"{self.label}: {self.done:,}/{total} {self.unit}{pct}, {self.rate():.1f} {self.unit}/s, "
            f"ETA {fmt_duration(self.eta_s())}, ok {self.ok:,}, errors {self.error:,}{skipped}"
        )

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self, total: int, skipped: int = 0) -> None:
        self.total, self.skipped = total, skipped
        self._t0 = time.monotonic()
        if self.live:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bar

            self._bar = Bar(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[counts]}"),
                console=self.console,
                transient=False,
            )
            self._task = self._bar.add_task(self.label, total=total, completed=self.done, **self._fields())
            self._bar.start()
        else:
            self._emit()
            self._ticker = threading.Thread(target=self._tick, name="raycolor-progress", daemon=True)
            self._ticker.start()

    def _tick(self) -> None:
        # a line every every_s even while nothing finishes (model loading, a slow first shard)
        while not self._stopped.wait(self.every_s):
            self._emit()

    def _fields(self) -> dict:
        return {"rate": f"{self.rate():.1f} {self.unit}/s", "counts": f"ok {self.ok:,} · errors {self.error:,}"}

    def _emit(self) -> None:
        with self._lock:
            self.console.print(self.line(), markup=False, soft_wrap=True)

    def update(self, ok: int = 0, error: int = 0) -> None:
        self.ok += ok
        self.error += error
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, **self._fields())

    def close(self) -> None:
        self._stopped.set()
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, **self._fields())
            self._bar.stop()
            self._bar = None
        elif self.total is not None:
            if self._ticker is not None:
                self._ticker.join()
                self._ticker = None
            self._emit()
            self.total = None  # closed: a second close says nothing

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TrainProgress:
    """Training's report on the driver: one line per epoch (with the run's ETA) and, on a terminal, a live bar
    of the current epoch's optimizer steps. Rank 0 sends ("step", epoch, epochs, steps) and
    ("epoch", line) events; `handle` draws them."""

    def __init__(self, *, stream: IO[str] | None = None, steps_per_epoch: int | None = None, live: bool | None = None):
        from rich.console import Console

        self.console = Console(file=stream or sys.stderr, highlight=False)
        self.live = (self.console.is_terminal and not self.console.is_dumb_terminal) if live is None else live
        self.steps_per_epoch = steps_per_epoch
        self._bar = None
        self._task = None
        self._epoch = None

    def handle(self, event: tuple) -> None:
        kind, *args = event
        if kind == "epoch":
            self.console.print(args[0], markup=False, soft_wrap=True)  # above the live bar, if any
        elif kind == "step" and self.live:
            epoch, epochs, steps = args
            if self._bar is None:
                from rich.progress import (
                    BarColumn,
                    MofNCompleteColumn,
                    TextColumn,
                    TimeElapsedColumn,
                )
                from rich.progress import Progress as Bar

                self._bar = Bar(
                    TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                    TimeElapsedColumn(), console=self.console,
                )
                self._bar.start()
            if epoch != self._epoch:
                if self._task is not None:
                    self._bar.remove_task(self._task)
                self._task = self._bar.add_task(f"epoch {epoch}/{epochs}", total=self.steps_per_epoch)
                self._epoch = epoch
            self._bar.update(self._task, completed=steps)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
