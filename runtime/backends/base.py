"""The one small interface every backend implements (after Polygraphy's runner: load once, validate
inputs, run, report time)."""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import defaultdict

import numpy as np

from ...errors import UserError


class Backend(ABC):
    name = "base"

    def __init__(self, specs: dict[str, dict]):
        # specs: graph name -> manifest entry {"inputs": [{"name","dtype","shape"}], "outputs": [...], "batch": {...}}
        self.specs = specs
        self.times: dict[str, list[float]] = defaultdict(list)
        self._valid: set = set()   # (graph, names, dtypes, shapes) already checked: the prior step repeats one

    def has(self, graph: str) -> bool:
        return graph in self.specs

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run `graph` on `feeds` (validated against its contract) -> outputs by name."""
        if graph not in self.specs:
            raise UserError(f"the {self.name} backend has no graph {graph!r}; the bundle holds {', '.join(self.specs)}")
        key = (graph, *((k, v.dtype, v.shape) for k, v in feeds.items()))
        if key not in self._valid:
            self._validate(graph, feeds)
            self._valid.add(key)
        t0 = time.perf_counter()
        out = self._run(graph, feeds)
        self.times[graph].append(time.perf_counter() - t0)
        return out

    @abstractmethod
    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ...

    def close(self) -> None:
        pass

    def _validate(self, graph: str, feeds: dict[str, np.ndarray]) -> None:
        spec = self.specs[graph]
        names = [t["name"] for t in spec["inputs"]]
        if sorted(feeds) != sorted(names):
            raise ValueError(f"{graph}: inputs {sorted(feeds)} given, the graph takes {names}")
        batch = None
        for t in spec["inputs"]:
            a = feeds[t["name"]]
            if a.dtype != np.dtype(t["dtype"]):
                raise ValueError(f"{graph}: input {t['name']} is {a.dtype}, the graph takes {t['dtype']}")
            if a.ndim != len(t["shape"]):
                raise ValueError(f"{graph}: input {t['name']} has rank {a.ndim}, the graph takes {len(t['shape'])}")
            for got, want in zip(a.shape, t["shape"]):
                if want == "B":
                    batch = got if batch is None else batch
                    if got != batch:
                        raise ValueError(f"{graph}: inconsistent batch sizes across inputs ({got} vs {batch})")
                elif got != want:
                    raise ValueError(f"{graph}: input {t['name']} has shape {list(a.shape)}, the graph takes {t['shape']}")
        rng = spec.get("batch")
        if batch is not None and rng and not rng["min"] <= batch <= rng["max"]:
            raise UserError(f"{graph}: batch {batch} is outside the exported range {rng['min']}..{rng['max']}; "
                            "use a smaller --batch or re-export with a larger --max-batch")

    def summary(self) -> dict[str, dict]:
        """Per graph: calls and total / median seconds."""
        return {g: {"calls": len(t), "total_s": float(np.sum(t)), "median_s": float(np.median(t))}
                for g, t in self.times.items() if t}
