"""The two-stage DisCo-Diff training loop (Xu et al. 2024, Sec. 3.2).

Stage 1: denoiser and encoder end to end on the EDM loss, the encoder's latents relaxed with
Gumbel-softmax and dropped to a null code with probability `latent_dropout`; Adam, EMA.
Stage 2: the autoregressive prior on the frozen EMA encoder's tokens for the training set.

Every random draw of step s on rank r comes from a generator seeded by (seed, stage, rank, s), so a run
resumed from its saved state continues exactly as if it had never stopped, and no RNG state needs
storing. Only rank 0 writes files.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from .. import checkpoint as ckpt
from ..atomic import atomic_write_text
from ..config import ModelConfig, TrainConfig
from ..data import Dataset
from ..edm import edm_loss, sample_sigma
from ..networks import DisCoDiff, gumbel_weights
from .dist import Dist
from .plots import read_metrics, save_loss_curve
from .samples import save_final_samples, save_progress_samples


@dataclass
class RunFiles:
    out: Path

    @property
    def model(self) -> Path:
        return self.out / ckpt.MODEL_FILE

    @property
    def state(self) -> Path:
        return self.out / ckpt.STATE_FILE

    @property
    def metrics(self) -> Path:
        return self.out / "metrics.jsonl"

    @property
    def options(self) -> Path:
        return self.out / "training_options.json"


def step_generator(seed: int, stage: int, rank: int, step: int, device: torch.device) -> torch.Generator:
    s = int(np.random.SeedSequence([seed, stage, rank, step]).generate_state(1, np.uint64)[0] >> 1)
    torch.manual_seed(s)  # dropout and anything else that draws from the global generator
    return torch.Generator(device=device).manual_seed(s)


class Stage1(nn.Module):
    """Denoiser + encoder as one module, so DDP averages both networks' gradients."""

    def __init__(self, model: DisCoDiff):
        super().__init__()
        self.denoiser, self.encoder = model.denoiser, model.encoder
        self.cfg = model.cfg

    def forward(self, y, labels, sigma, noise, gen, tau: float, balance: float):
        cfg = self.cfg
        weights, logits = None, None
        if self.encoder is not None:
            logits = self.encoder(y)                                                # [B, m, k]
            weights = gumbel_weights(logits, tau, cfg.straight_through, cfg.latent_dropout, gen)
        loss = edm_loss(self.denoiser, y, sigma, noise, cfg.sigma_data, latent_weights=weights,
                        class_labels=labels).mean()
        if logits is not None and balance > 0:
            loss = loss + balance * code_imbalance(logits)
        return loss, logits


def code_imbalance(logits: torch.Tensor) -> torch.Tensor:
    """1 - H(p_bar)/log k, averaged over latents, where p_bar [m, k] is the batch-mean code
    distribution: 0 when the batch uses all codes evenly, 1 when it uses one. Keeps codes from
    collapsing without asking any single example to be uncertain."""
    p_bar = logits.softmax(-1).mean(0)                                              # [m, k]
    entropy = -(p_bar * p_bar.clamp_min(1e-12).log()).sum(-1)                       # [m]
    return (1 - entropy / math.log(logits.shape[-1])).mean()


def gumbel_tau(step: int, total: int, start: float, end: float) -> float:
    """Geometric annealing of the Gumbel-softmax temperature from `start` to `end` (constant if start = 0)."""
    if start <= 0:
        return end
    return start * (end / start) ** min(step / max(total - 1, 1), 1.0)


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


def truncate_metrics(path: Path, stage1: int, stage2: int) -> None:
    """On resume, drop log lines written after the saved state (they will be written again)."""
    rows = [r for r in read_metrics(path)
            if (r["stage"] == 1 and r["step"] <= stage1) or (r["stage"] == 2 and r["step"] <= stage2)]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _lr(step: int, total: int, base: float, warmup: int, schedule: str) -> float:
    """Linear warm-up, then constant or cosine decay to 0 at `total`. The cosine tail lets the last
    steps settle instead of jittering at full rate (with Adam the jitter is ~lr per parameter, which
    on toy8 showed as a prior whose code shares were off by ~1.5 points)."""
    rate = base * min(1.0, (step + 1) / max(warmup, 1))
    if schedule == "cosine" and step >= warmup:
        rate *= 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))
    return rate


def train(out: Path, ds: Dataset, cfg: ModelConfig, tc: TrainConfig, dist: Dist, options: dict,
          resume: bool = False, save_every: int = 500, progress: bool = True) -> Path:
    """Run (or resume) both stages; returns the path of the written model checkpoint."""
    files = RunFiles(Path(out))
    dev = dist.device
    torch.manual_seed(tc.seed)  # identical initial weights on every rank
    model = DisCoDiff(cfg).to(dev)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    stage1 = Stage1(model)
    opt1 = torch.optim.Adam(stage1.parameters(), lr=tc.lr, betas=(0.9, 0.99), eps=1e-8)
    opt2 = torch.optim.AdamW(model.prior.parameters(), lr=tc.prior_lr, weight_decay=0.01) if cfg.m else None
    step1 = step2 = 0

    if resume:
        prior_init = copy.deepcopy(model.prior.state_dict()) if model.prior is not None else None
        st = ckpt.load_state(files.state)
        model.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        opt1.load_state_dict(st["opt1"])
        step1, step2 = int(st["step1"]), int(st["step2"])
        if step1 < tc.steps:
            # Stage 1 goes on, so the tokens change: the prior restarts from its initial weights and a
            # fresh optimiser, exactly as in a run that never stopped.
            step2 = 0
            if prior_init is not None:
                model.prior.load_state_dict(prior_init)
        elif opt2 is not None and st.get("opt2") is not None:
            opt2.load_state_dict(st["opt2"])
        if dist.main:
            truncate_metrics(files.metrics, step1, step2)
    elif dist.main:
        files.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(files.metrics, "")
    if dist.main:  # on resume this records the new step counts
        atomic_write_text(files.options, json.dumps(options, indent=2) + "\n")

    def save_state() -> None:
        if dist.main:
            ckpt.save_state(files.state, {
                "model": model.state_dict(), "ema": ema.state_dict(), "opt1": opt1.state_dict(),
                "opt2": opt2.state_dict() if opt2 is not None else None, "step1": step1, "step2": step2})

    def log(row: dict) -> None:
        if dist.main:
            with open(files.metrics, "a") as f:
                f.write(json.dumps(row) + "\n")

    x_all = torch.from_numpy(ds.x).to(dev)
    y_all = torch.from_numpy(ds.labels).to(dev) if ds.labels is not None else None
    ddp1 = DDP(stage1) if dist.enabled else stage1
    per_rank = max(tc.batch // dist.world, 1)
    t0 = time.time()

    # -------------------------------------------------------------------------------- stage 1
    bar = tqdm(total=tc.steps, initial=step1, desc="stage 1 (denoiser+encoder)", disable=not (progress and dist.main),
               dynamic_ncols=True)
    acc_loss, acc_codes, acc_n = 0.0, 0.0, 0
    try:
        while step1 < tc.steps:
            gen = step_generator(tc.seed, 1, dist.rank, step1, dev)
            idx = torch.randint(len(ds), (per_rank,), generator=gen, device=dev)
            y = x_all[idx]
            labels = y_all[idx] if y_all is not None else None
            sigma = sample_sigma(per_rank, tc.p_mean, tc.p_std, gen, dev)
            noise = torch.randn(y.shape, generator=gen, device=dev)
            for g in opt1.param_groups:
                g["lr"] = _lr(step1, tc.steps, tc.lr, tc.lr_warmup, tc.lr_schedule)
            tau = gumbel_tau(step1, tc.steps, tc.tau_start, cfg.gumbel_tau)
            loss, logits = ddp1(y, labels, sigma, noise, gen, tau, tc.code_balance)
            opt1.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip > 0:
                nn.utils.clip_grad_norm_(stage1.parameters(), tc.grad_clip)
            opt1.step()
            ema_update(ema.denoiser, model.denoiser, step1, tc.ema_halflife)
            if model.encoder is not None:
                ema_update(ema.encoder, model.encoder, step1, tc.ema_halflife)
            step1 += 1
            acc_loss += loss.item()
            acc_codes += code_usage(logits) if logits is not None else 0.0
            acc_n += 1
            bar.update(1)
            if step1 % tc.log_every == 0 or step1 == tc.steps:
                row = {"stage": 1, "step": step1, "loss": acc_loss / acc_n, "lr": opt1.param_groups[0]["lr"],
                       "time": round(time.time() - t0, 2)}
                if logits is not None:
                    row["codes_used"] = acc_codes / acc_n
                log(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}")
                acc_loss, acc_codes, acc_n = 0.0, 0.0, 0
            if step1 % save_every == 0 or step1 == tc.steps:
                save_state()
            if dist.main and tc.sample_every and step1 % tc.sample_every == 0 and step1 < tc.steps:
                save_progress_samples(ema, ds, files.out, step1, dev)
    except KeyboardInterrupt:
        save_state()
        raise
    finally:
        bar.close()

    # -------------------------------------------------------------------------------- stage 2
    if model.prior is not None:
        tokens = encode_tokens(ema.encoder, x_all)                                  # [N, m]
        prior_labels = y_all if y_all is not None else torch.full((len(ds),), cfg.num_classes, device=dev)
        ddp2 = DDP(model.prior) if dist.enabled else model.prior
        bar = tqdm(total=tc.prior_steps, initial=step2, desc="stage 2 (prior)", disable=not (progress and dist.main),
                   dynamic_ncols=True)
        acc_loss, acc_n = 0.0, 0
        try:
            while step2 < tc.prior_steps:
                gen = step_generator(tc.seed, 2, dist.rank, step2, dev)
                idx = torch.randint(len(ds), (max(tc.prior_batch // dist.world, 1),), generator=gen, device=dev)
                for g in opt2.param_groups:
                    g["lr"] = _lr(step2, tc.prior_steps, tc.prior_lr, tc.lr_warmup, tc.lr_schedule)
                z, lab = tokens[idx], prior_labels[idx]
                loss = F.cross_entropy(ddp2(torch.cat([lab[:, None], z[:, :-1]], 1)).reshape(-1, cfg.k), z.reshape(-1))
                opt2.zero_grad(set_to_none=True)
                loss.backward()
                opt2.step()
                step2 += 1
                acc_loss += loss.item()
                acc_n += 1
                bar.update(1)
                if step2 % tc.log_every == 0 or step2 == tc.prior_steps:
                    log({"stage": 2, "step": step2, "loss": acc_loss / acc_n, "time": round(time.time() - t0, 2)})
                    bar.set_postfix(loss=f"{acc_loss / acc_n:.4f}")
                    acc_loss, acc_n = 0.0, 0
                if step2 % save_every == 0:
                    save_state()
        except KeyboardInterrupt:
            save_state()
            raise
        finally:
            bar.close()
        ema.prior.load_state_dict(model.prior.state_dict())
    save_state()

    # -------------------------------------------------------------------------------- outputs
    if dist.main:
        info = {"data": {"name": ds.name, "data_shape": list(ds.data_shape), "num_classes": ds.num_classes,
                         "class_names": ds.class_names, "n": len(ds)},
                "train": {"steps": step1, "prior_steps": step2, "seed": tc.seed, "world_size": dist.world}}
        ckpt.save_model(files.model, ema.cpu(), cfg, info)
        save_loss_curve(files.metrics, files.out / "loss.png")
        save_final_samples(ema, ds, files.out, torch.device("cpu"))
    dist.barrier()
    return files.model


@torch.no_grad()
def encode_tokens(encoder: nn.Module, x: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """Arg-max tokens of the (EMA) encoder for every example: [N, m] int64."""
    return torch.cat([encoder(x[i:i + batch]).argmax(-1) for i in range(0, len(x), batch)])
