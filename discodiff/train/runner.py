"""The step runner both training stages share: progress bar, metrics rows, periodic saves, and stopping
at a step boundary when a signal asked for it (see `signals`)."""
from __future__ import annotations

import time
from typing import Callable

import torch
import torch.distributed as torch_dist
from tqdm import tqdm

from discodiff.train.metrics import MetricsLog
from discodiff.train.signals import StopSignals, Stopped


class StageRunner:
    def __init__(self, *, log: MetricsLog, save: Callable[[], None], stop: StopSignals, dist, log_every: int,
                 save_every: int, progress: bool, resume_hint: str, between: Callable[[], None] | None = None):
        self.log, self.save, self.stop, self.dist = log, save, stop, dist
        self.between = between            # called after every step (threads.ThreadPolicy.between_steps)
        self.log_every, self.save_every, self.progress = log_every, save_every, progress
        self.resume_hint = resume_hint
        self.t0 = time.time()

    def check_stop(self, where: str) -> None:
        """Save and raise Stopped if a signal arrived (on any rank: all ranks stop at the same step)."""
        requested = self.stop.requested or 0
        if self.dist.enabled:
            flag = torch.tensor([requested], device=self.dist.device)
            torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MAX)
            requested = int(flag.item())
        if requested:
            self.save()
            self.stop.requested = requested
            raise Stopped(f"stopped by {self.stop.name} after {where}; the state is saved, continue with: "
                          f"{self.resume_hint}", requested)

    def run(self, stage: int, desc: str, start: int, total: int, step_fn: Callable[[int], dict],
            set_step: Callable[[int], None], current: tuple[str, ...] = (), after: Callable[[int], None] | None = None) -> int:
        """Steps start..total-1 of one stage. `step_fn(step)` does one whole step (forward, backward,
        optimiser, EMA) and returns its metrics; keys in `current` are logged as their latest value, the
        others averaged since the last row. `set_step` records the finished step count in the saved state."""
        step, acc, n = start, {}, 0
        with tqdm(total=total, initial=start, desc=desc, disable=not (self.progress and self.dist.main),
                  dynamic_ncols=True) as bar:
            while step < total:
                metrics = step_fn(step)
                step += 1
                set_step(step)
                n += 1
                for k, v in metrics.items():
                    acc[k] = v if k in current else acc.get(k, 0.0) + v
                bar.update(1)
                if step % self.log_every == 0 or step == total:
                    row = {"stage": stage, "step": step}
                    row.update({k: (v if k in current else v / n) for k, v in acc.items()})
                    row["time"] = round(time.time() - self.t0, 2)
                    if self.dist.main:
                        self.log.append(row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}")
                    acc, n = {}, 0
                if step % self.save_every == 0 or step == total:
                    self.save()
                if after is not None:
                    after(step)
                if self.between is not None:
                    self.between()
                if step < total:
                    self.check_stop(f"stage {stage} step {step}")
        return step
