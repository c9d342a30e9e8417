"""metrics.jsonl: one JSON row per logged step, appended as training goes.

Each row is written whole with one write and flushed, so a kill can at worst leave a torn last line;
reading drops a line that does not parse (and says so), and on resume the file is rewritten atomically
to the rows up to the saved state.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from discodiff.atomic import atomic_write_text


def read_metrics(path: Path) -> list[dict]:
    """Rows of a metrics file; lines that do not parse as a JSON object with stage and step are dropped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):  # a torn line, or one nested past Python's stack: dropped alike
            continue
        if isinstance(row, dict) and isinstance(row.get("stage"), int) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


class MetricsLog:
    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled

    def reset(self) -> None:
        if self.enabled:
            atomic_write_text(self.path, "")

    def truncate(self, stage1: int, stage2: int) -> None:
        """Keep the rows up to a saved state (rows after it will be written again); drop torn lines."""
        if self.enabled:
            rows = [r for r in read_metrics(self.path)
                    if (r["stage"] == 1 and r["step"] <= stage1) or (r["stage"] == 2 and r["step"] <= stage2)]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))

    def append(self, row: dict) -> None:
        if self.enabled:
            try:
                with open(self.path, "a") as f:
                    f.write(json.dumps(row) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as e:   # a torn line may be left: reading drops it
                if e.errno is None:
                    raise
                raise OSError(e.errno, e.strerror, str(self.path)) from e
