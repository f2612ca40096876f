"""Live progress on the driver: one bar per actor task (a modality, a branch model...).

A row is ``{"name", "epoch", "epochs", "status"}`` (``status``: a short text the task formats, e.g.
its loss and validation figure). On a terminal these are tqdm bars; when stderr is not a terminal
(CI logs, `ray submit` output captured to a file) a plain line per name is printed every tenth of
its epochs instead, so logs stay readable.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm.auto import tqdm


class Reporter:
    """What a task run by ``distributed.actors.run_actors`` sees of the driver. This base reports
    nowhere (a task run in-process, a test); inside an actor rows and events reach the driver."""

    def progress(self, row: dict[str, Any]) -> None:
        """One row ``{"name", "epoch", "epochs", "status", ...}`` for the task's progress bar."""

    def event(self, text: str) -> None:
        """One line printed on the driver (e.g. "resumed from its checkpoint at epoch 4")."""


class ProgressBars:
    def __init__(self, names: list[str], enabled: bool = True, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.width = max((len(m) for m in names), default=4)
        self.last_printed: dict[str, int] = {}
        self.bars = {}
        if self.tty:
            self.bars = {
                m: tqdm(total=None, desc=f"{m:<{self.width}}", position=i, unit="ep",
                        file=self.stream, leave=True, dynamic_ncols=True)
                for i, m in enumerate(names)
            }

    def update(self, rows: dict[str, dict[str, Any]], events: list[str]) -> None:
        if not self.enabled:
            return
        for text in events:
            if self.tty:
                tqdm.write(text, file=self.stream)
            else:
                print(text, file=self.stream, flush=True)
        for name, row in rows.items():
            if self.tty:
                self._update_bar(name, row)
            else:
                self._print_line(name, row)

    def _update_bar(self, name: str, row: dict[str, Any]) -> None:
        bar = self.bars.get(name)
        if bar is None:
            return
        if bar.total is None:
            bar.total = int(row["epochs"])
        bar.n = int(row["epoch"])
        bar.set_postfix_str(row["status"], refresh=False)
        bar.refresh()

    def _print_line(self, name: str, row: dict[str, Any]) -> None:
        epoch, total = int(row["epoch"]), int(row["epochs"])
        every = max(1, total // 10)
        last = self.last_printed.get(name, 0)
        if epoch != last and (epoch - last >= every or epoch == total):
            self.last_printed[name] = epoch
            print(f"{name:<{self.width}}  epoch {epoch:>4}/{total}  {row['status']}",
                  file=self.stream, flush=True)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
