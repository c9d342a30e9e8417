"""The two-stage DisCo-Diff training loop (Xu et al. 2024, Sec. 3.2); the losses are `discodiff.losses`.

Stage 1: denoiser and encoder end to end on the EDM loss, the encoder's latents relaxed with
Gumbel-softmax and dropped to a null code with probability `latent_dropout`; Adam, EMA.
Stage 2: the autoregressive prior on the frozen EMA encoder's tokens for the training set.

Every random draw of step s on rank r comes from a generator seeded by (seed, stage, rank, s), so a run
resumed from its saved state continues exactly as if it had never stopped, and no RNG state needs
storing. A signal stops the run at a step boundary after saving (`signals`). Only rank 0 writes files.
"""
from __future__ import annotations

import copy
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from discodiff import checkpoint as ckpt
from discodiff import rundir
from discodiff.atomic import atomic_write_text, reclaim
from discodiff.config import ModelConfig, TrainConfig
from discodiff.data import Dataset
from discodiff.errors import UserError
from discodiff.losses import gumbel_tau, prior_loss, sample_sigma, stage1_loss
from discodiff.networks import DisCoDiff
from discodiff.runtime.contract import null_label
from discodiff.train.dist import Dist
from discodiff.train.metrics import MetricsLog
from discodiff.train.plots import save_loss_curve
from discodiff.train.runner import StageRunner
from discodiff.train.samples import save_final_samples, save_progress_samples
from discodiff.train import threads as thread_policy
from discodiff.train.signals import StopSignals


@dataclass
class TrainState:
    """Everything `--resume` restores; saved atomically as one safetensors file."""

    model: DisCoDiff
    ema: DisCoDiff
    opt1: torch.optim.Optimizer
    opt2: torch.optim.Optimizer | None
    step1: int = 0
    step2: int = 0
    threads: int = 0     # CPU threads the run computes with (0: unknown); --resume reuses it (threads.py)
    share: bool = False  # --share-cores: the count follows the load; a resumed run keeps doing so

    def save(self, path: Path) -> None:
        ckpt.save_state(path, {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                               "opt1": self.opt1.state_dict(), "opt2": self.opt2.state_dict() if self.opt2 else None,
                               "step1": self.step1, "step2": self.step2, "threads": self.threads,
                               "share": self.share})

    def load(self, path: Path, tc: TrainConfig) -> None:
        prior_init = copy.deepcopy(self.model.prior.state_dict()) if self.model.prior is not None else None
        st = ckpt.load_state(path)
        try:
            self.model.load_state_dict(st["model"])
            self.ema.load_state_dict(st["ema"])
            self.opt1.load_state_dict(st["opt1"])
            self.step1, self.step2 = int(st["step1"]), int(st["step2"])
            self.threads = int(st.get("threads") or 0)   # states saved before the thread policy have none
            self.share = bool(st.get("share", False))
            if self.step1 < tc.steps:
                # Stage 1 goes on, so the tokens change: the prior restarts from its initial weights and a
                # fresh optimiser, exactly as in a run that never stopped.
                self.step2 = 0
                if prior_init is not None:
                    self.model.prior.load_state_dict(prior_init)
            elif self.opt2 is not None and st.get("opt2") is not None:
                self.opt2.load_state_dict(st["opt2"])
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise UserError(f"{path} does not fit this run's model ({' '.join(str(e).split())[:200]}); the file is "
                            "damaged or from another run: start a new run with --overwrite")


class Stage1(nn.Module):
    """Denoiser + encoder as one module, so DDP averages both networks' gradients."""

    def __init__(self, model: DisCoDiff):
        super().__init__()
        self.denoiser, self.encoder = model.denoiser, model.encoder
        self.cfg = model.cfg

    def forward(self, y, labels, sigma, noise, gen, tau: float, balance: float):
        return stage1_loss(self.denoiser, self.encoder, self.cfg, y, labels, sigma, noise, gen, tau, balance)


def step_generator(seed: int, stage: int, rank: int, step: int, device: torch.device) -> torch.Generator:
    s = int(np.random.SeedSequence([seed, stage, rank, step]).generate_state(1, np.uint64)[0]) >> 1
    torch.manual_seed(s)  # dropout and anything else that draws from the global generator
    return torch.Generator(device=device).manual_seed(s)


def ema_update(ema: nn.Module, net: nn.Module, step: int, halflife: float) -> None:
    # Half-life ramps up with training (as EDM's ema_rampup), so early EMA is not stuck at the init.
    beta = 0.5 ** (1.0 / max(min(halflife, 0.5 * (step + 1)), 1e-8))
    with torch.no_grad():
        for pe, pn in zip(ema.parameters(), net.parameters()):
            pe.lerp_(pn.detach(), 1 - beta)


def code_usage(logits: torch.Tensor) -> float:
    """Mean number of distinct codes the batch's arg-max tokens use, per latent."""
    tok = logits.argmax(-1)                                                         # [B, m]
    return float(np.mean([len(torch.unique(tok[:, j])) for j in range(tok.shape[1])]))


def _lr(step: int, total: int, base: float, warmup: int, schedule: str) -> float:
    """Linear warm-up, then constant or cosine decay to 0 at `total`. The cosine tail lets the last
    steps settle instead of jittering at full rate (with Adam the jitter is ~lr per parameter, which
    on toy8 showed as a prior whose code shares were off by ~1.5 points)."""
    rate = base * min(1.0, (step + 1) / max(warmup, 1))
    if schedule == "cosine" and step >= warmup:
        rate *= 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))
    return rate


def data_info(ds: Dataset) -> dict:
    return {"name": ds.name, "data_shape": list(ds.data_shape), "num_classes": ds.num_classes,
            "class_names": ds.class_names, "n": len(ds)}


def write_initial(out: Path, ds: Dataset, cfg: ModelConfig, tc: TrainConfig, options: dict) -> Path:
    """The untrained model (the weights training would start from) as model.safetensors, in the same
    format as a trained one: for export, runtime and benchmarks of sizes this machine cannot train."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / rundir.OPTIONS_FILE, json.dumps(options, indent=2) + "\n")
    torch.manual_seed(tc.seed)
    model = DisCoDiff(cfg).eval()
    info = {"data": data_info(ds), "train": {"steps": 0, "prior_steps": 0, "seed": tc.seed, "init_only": True}}
    ckpt.save_model(out / rundir.MODEL_FILE, model, cfg, info)
    return out / rundir.MODEL_FILE


@torch.no_grad()
def encode_tokens(encoder: nn.Module, x: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """Arg-max tokens of the (EMA) encoder for every example: [N, m] int64."""
    return torch.cat([encoder(x[i:i + batch]).argmax(-1) for i in range(0, len(x), batch)])


def _check_finite(loss: float, stage: int, step: int) -> None:
    if not math.isfinite(loss):
        raise UserError(f"the stage-{stage} loss became {loss} at step {step + 1}: training diverged (nothing after "
                        "the last save was kept); lower the learning rate or check the data")


# ---------------------------------------------------------------------------------------------
# Stages


def run_stage1(st: TrainState, runner: StageRunner, ds: Dataset, cfg: ModelConfig, tc: TrainConfig, dist: Dist,
               out: Path) -> None:
    dev = dist.device
    stage1 = Stage1(st.model)
    ddp = DDP(stage1) if dist.enabled else stage1
    x_all = torch.from_numpy(ds.x).to(dev)
    y_all = torch.from_numpy(ds.labels).to(dev) if ds.labels is not None else None
    per_rank = max(tc.batch // dist.world, 1)

    def step_fn(step: int) -> dict:
        gen = step_generator(tc.seed, 1, dist.rank, step, dev)
        idx = torch.randint(len(ds), (per_rank,), generator=gen, device=dev)
        y = x_all[idx]
        labels = y_all[idx] if y_all is not None else None
        sigma = sample_sigma(per_rank, tc.p_mean, tc.p_std, gen, dev)
        noise = torch.randn(y.shape, generator=gen, device=dev)
        for g in st.opt1.param_groups:
            g["lr"] = _lr(step, tc.steps, tc.lr, tc.lr_warmup, tc.lr_schedule)
        loss, logits = ddp(y, labels, sigma, noise, gen, gumbel_tau(step, tc.steps, tc.tau_start, cfg.gumbel_tau),
                           tc.code_balance)
        st.opt1.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip > 0:
            nn.utils.clip_grad_norm_(stage1.parameters(), tc.grad_clip)
        st.opt1.step()
        ema_update(st.ema.denoiser, st.model.denoiser, step, tc.ema_halflife)
        if st.model.encoder is not None:
            ema_update(st.ema.encoder, st.model.encoder, step, tc.ema_halflife)
        metrics = {"loss": loss.item(), "lr": st.opt1.param_groups[0]["lr"]}
        if logits is not None:
            metrics["codes_used"] = code_usage(logits)
        _check_finite(metrics["loss"], 1, step)
        return metrics

    def after(step: int) -> None:
        if dist.main and tc.sample_every and step % tc.sample_every == 0 and step < tc.steps:
            save_progress_samples(st.ema, ds, out, step, dev)

    runner.run(1, "stage 1 (denoiser+encoder)", st.step1, tc.steps, step_fn, lambda s: setattr(st, "step1", s),
               current=("lr",), after=after)


def run_stage2(st: TrainState, runner: StageRunner, ds: Dataset, cfg: ModelConfig, tc: TrainConfig, dist: Dist) -> None:
    dev = dist.device
    x_all = torch.from_numpy(ds.x).to(dev)
    tokens = encode_tokens(st.ema.encoder, x_all)                                   # [N, m]
    labels = (torch.from_numpy(ds.labels).to(dev) if ds.labels is not None
              else torch.full((len(ds),), null_label(cfg.num_classes), device=dev))
    ddp = DDP(st.model.prior) if dist.enabled else st.model.prior

    def step_fn(step: int) -> dict:
        gen = step_generator(tc.seed, 2, dist.rank, step, dev)
        idx = torch.randint(len(ds), (max(tc.prior_batch // dist.world, 1),), generator=gen, device=dev)
        for g in st.opt2.param_groups:
            g["lr"] = _lr(step, tc.prior_steps, tc.prior_lr, tc.lr_warmup, tc.lr_schedule)
        loss = prior_loss(ddp, labels[idx], tokens[idx])
        st.opt2.zero_grad(set_to_none=True)
        loss.backward()
        st.opt2.step()
        metrics = {"loss": loss.item()}
        _check_finite(metrics["loss"], 2, step)
        return metrics

    runner.run(2, "stage 2 (prior)", st.step2, tc.prior_steps, step_fn, lambda s: setattr(st, "step2", s))
    st.ema.prior.load_state_dict(st.model.prior.state_dict())


# ---------------------------------------------------------------------------------------------


def train(out: Path, ds: Dataset, cfg: ModelConfig, tc: TrainConfig, dist: Dist, options: dict,
          resume: bool = False, progress: bool = True, resume_hint: str | None = None,
          threads: int | None = None, share_cores: bool = False) -> Path:
    """Run (or resume) both stages; returns the path of the written model checkpoint. Signals stop it at
    a step boundary with the state saved (`Stopped`). The caller keeps other writers out of `out`
    (discodiff-train holds its `discodiff.lock` on rank 0 for the whole run)."""
    out = Path(out)
    files = {name: out / name for name in (rundir.MODEL_FILE, rundir.STATE_FILE, rundir.METRICS_FILE, rundir.OPTIONS_FILE)}
    dev = dist.device
    torch.manual_seed(tc.seed)  # identical initial weights on every rank
    model = DisCoDiff(cfg).to(dev)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    # Fused optimisers: one kernel over all parameters instead of a Python loop (16 % of a shapes step on CPU)
    opt1 = torch.optim.Adam(Stage1(model).parameters(), lr=tc.lr, betas=(0.9, 0.99), eps=1e-8, fused=True)
    opt2 = (torch.optim.AdamW(model.prior.parameters(), lr=tc.prior_lr, weight_decay=0.01, fused=True)
            if cfg.m else None)
    st = TrainState(model, ema, opt1, opt2)
    log = MetricsLog(files[rundir.METRICS_FILE], enabled=dist.main)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        for name in rundir.RUN_FILES:   # temp files of a save that a kill interrupted
            reclaim(out, f".{name.rsplit('.', 1)[0]}.")
    if resume:
        st.load(files[rundir.STATE_FILE], tc)
    policy = thread_policy.choose(threads, share_cores or st.share, saved=st.threads or None).apply()
    st.threads, st.share = policy.threads, policy.share
    if dist.main and progress:
        print(f"cpu threads: {policy.reason}", file=sys.stderr, flush=True)
    if dist.main:  # the run's marker first (on resume it records the new step counts), then the log
        atomic_write_text(files[rundir.OPTIONS_FILE], json.dumps(options, indent=2) + "\n")
    if resume:
        log.truncate(st.step1, st.step2)
    else:
        log.reset()

    def save() -> None:
        if dist.main:
            st.save(files[rundir.STATE_FILE])

    hint = resume_hint or f"discodiff-train --out {out} --resume"
    with StopSignals() as stop:
        runner = StageRunner(log=log, save=save, stop=stop, dist=dist, log_every=tc.log_every,
                             save_every=tc.save_every, progress=progress, resume_hint=hint,
                             between=policy.between_steps if policy.share else None)
        run_stage1(st, runner, ds, cfg, tc, dist, out)
        runner.check_stop("stage 1")
        if model.prior is not None:
            run_stage2(st, runner, ds, cfg, tc, dist)
        save()
        runner.check_stop("training")
        if dist.main:
            info = {"data": data_info(ds),
                    "train": {"steps": st.step1, "prior_steps": st.step2, "seed": tc.seed, "world_size": dist.world}}
            ckpt.save_model(files[rundir.MODEL_FILE], ema.cpu(), cfg, info)
            save_loss_curve(files[rundir.METRICS_FILE], out / "loss.png")
            save_final_samples(ema, ds, out, torch.device("cpu"))
        dist.barrier()
    return files[rundir.MODEL_FILE]
