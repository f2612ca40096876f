"""Live progress on the driver: one bar per modality (epoch, train loss, val label loss).

On a terminal these are tqdm bars; when stderr is not a terminal (CI logs, `ray submit` output
captured to a file) a plain line per modality is printed every tenth of its epochs instead, so logs
stay readable.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm.auto import tqdm


def _postfix(row: dict[str, Any]) -> str:
    return (f"loss {row['loss_train']:.4f} | val label {row['loss_val_label']:.4f} "
            f"(best ep {row['best_epoch']})")


class ProgressBars:
    def __init__(self, modalities: list[str], enabled: bool = True, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.width = max((len(m) for m in modalities), default=4)
        self.last_printed: dict[str, int] = {}
        self.bars = {}
        if self.tty:
            self.bars = {
                m: tqdm(total=None, desc=f"{m:<{self.width}}", position=i, unit="ep",
                        file=self.stream, leave=True, dynamic_ncols=True)
                for i, m in enumerate(modalities)
            }

    def update(self, rows: dict[str, dict[str, Any]], events: list[str]) -> None:
        if not self.enabled:
            return
        for text in events:
            if self.tty:
                tqdm.write(text, file=self.stream)
            else:
                print(text, file=self.stream, flush=True)
        for modality, row in rows.items():
            if self.tty:
                self._update_bar(modality, row)
            else:
                self._print_line(modality, row)

    def _update_bar(self, modality: str, row: dict[str, Any]) -> None:
        bar = self.bars.get(modality)
        if bar is None:
            return
        if bar.total is None:
            bar.total = int(row["epochs"])
        bar.n = int(row["epoch"])
        bar.set_postfix_str(_postfix(row), refresh=False)
        bar.refresh()

    def _print_line(self, modality: str, row: dict[str, Any]) -> None:
        epoch, total = int(row["epoch"]), int(row["epochs"])
        every = max(1, total // 10)
        last = self.last_printed.get(modality, 0)
        if epoch != last and (epoch - last >= every or epoch == total):
            self.last_printed[modality] = epoch
            print(f"{modality:<{self.width}}  epoch {epoch:>4}/{total}  {_postfix(row)}",
                  file=self.stream, flush=True)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
