"""The one small interface every backend implements (after Polygraphy's runner: load once, validate
inputs, run, report time), as a context manager so nothing leaks when an error is raised between
opening and running: `with OrtBackend(...) as be: be.run(...)`."""
from __future__ import annotations

import time
import warnings
from abc import ABC, abstractmethod
from collections import defaultdict

import numpy as np

from discodiff.errors import UserError
from discodiff.runtime.contract import BATCH, GraphSpec


class CallTimes:
    """Calls, total time and the median of the first KEEP call times: memory does not grow with the
    number of calls (a server or a long run makes millions)."""

    KEEP = 4096

    def __init__(self):
        self.calls, self.total, self.kept = 0, 0.0, []

    def add(self, seconds: float) -> None:
        """Count one call of `seconds`."""
        self.calls += 1
        self.total += seconds
        if len(self.kept) < self.KEEP:
            self.kept.append(seconds)

    def summary(self) -> dict:
        """{"calls", "total_s", "median_s"} (the median of the kept call times)."""
        return {"calls": self.calls, "total_s": self.total, "median_s": float(np.median(self.kept))}


class Backend(ABC):
    """Runs the named graphs of a bundle on numpy arrays: `run(graph, feeds) -> outputs by name`, each
    call's inputs checked against the graph's `GraphSpec` (once per signature) and timed."""

    name = "base"

    def __init__(self, specs: dict[str, GraphSpec]):
        self.specs = specs
        self.times: dict[str, CallTimes] = defaultdict(CallTimes)
        self._valid: set = set()   # (graph, names, dtypes, shapes) already checked: the prior step repeats one
        self.closed = False

    # ----------------------------------------------------------------------------------- lifetime
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the backend's sessions or engines; safe to call twice."""
        if not self.closed:
            self.closed = True
            self._close()

    def _close(self) -> None:
        """What a backend releases (its sessions, device memory); called once."""

    def __del__(self):
        if not getattr(self, "closed", True):
            warnings.warn(f"{type(self).__name__} was not closed; use it as a context manager", ResourceWarning,
                          stacklevel=2)
            self.close()

    # ----------------------------------------------------------------------------------- running
    def has(self, graph: str) -> bool:
        """Whether `graph` is loaded."""
        return graph in self.specs

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run `graph` on `feeds` (validated against its contract) -> outputs by name."""
        if graph not in self.specs:
            raise UserError(f"the {self.name} backend has no graph {graph!r}; it holds {', '.join(self.specs)}")
        key = (graph, *((k, v.dtype, v.shape) for k, v in feeds.items()))
        if key not in self._valid:
            self._validate(self.specs[graph], feeds)
            self._valid.add(key)
        t0 = time.perf_counter()
        out = self._run(graph, feeds)
        self.times[graph].add(time.perf_counter() - t0)
        return out

    @abstractmethod
    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run `graph` on feeds already validated -> outputs by name."""

    @staticmethod
    def _validate(spec: GraphSpec, feeds: dict[str, np.ndarray]) -> None:
        """Feeds match the contract: names, dtypes, ranks, static axes, one batch size within the graph's
        range. ValueError for a caller's bug, UserError for a batch the bundle was not exported for."""
        if sorted(feeds) != sorted(spec.input_names):
            raise ValueError(f"{spec.name}: inputs {sorted(feeds)} given, the graph takes {spec.input_names}")
        batch = None
        for t in spec.inputs:
            a = feeds[t.name]
            if a.dtype != np.dtype(t.dtype):
                raise ValueError(f"{spec.name}: input {t.name} is {a.dtype}, the graph takes {t.dtype}")
            if a.ndim != len(t.shape):
                raise ValueError(f"{spec.name}: input {t.name} has rank {a.ndim}, the graph takes {len(t.shape)}")
            for got, want in zip(a.shape, t.shape):
                if want == BATCH:
                    batch = got if batch is None else batch
                    if got != batch:
                        raise ValueError(f"{spec.name}: inconsistent batch sizes across inputs ({got} vs {batch})")
                elif got != want:
                    raise ValueError(f"{spec.name}: input {t.name} has shape {list(a.shape)}, the graph takes {t.shape}")
        r = spec.batch
        if batch is not None and not r.min <= batch <= r.max:
            raise UserError(f"{spec.name}: batch {batch} is outside the exported range {r.min}..{r.max}; "
                            "use a smaller --batch or re-export with a larger --max-batch")

    def summary(self) -> dict[str, dict]:
        """Per graph: calls and total / median seconds."""
        return {g: t.summary() for g, t in self.times.items() if t.calls}

    def calls(self, graph: str) -> int:
        """How many times `graph` ran."""
        return self.times[graph].calls if graph in self.times else 0
