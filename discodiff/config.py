"""Model and training configuration and their JSON form (the presets live in `discodiff.presets`).

Torch-free on purpose: the exporter, the runtime tests and the benchmarks read configs without torch.
A config is a tree of dataclasses; `to_dict`/`from_dict` give the JSON that travels inside the
checkpoint's safetensors metadata and training_options.json (no pickle anywhere). `from_dict` checks
every field's type against its default's and `check_model`/`check_train` the ranges, so an edited or
damaged file fails with one line naming the field instead of deep inside torch.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1


@dataclass
class DenoiserConfig:
    backbone: str = "mlp"              # "mlp" for vectors, "unet" for images
    width: int = 256                   # MLP hidden width / U-Net base channels
    depth: int = 4                     # MLP blocks / U-Net residual blocks per level
    channel_mult: tuple[int, ...] = (1, 2)   # U-Net: channels per level = width * mult
    attn_levels: tuple[int, ...] = (1,)      # U-Net: levels with cross-attention to the latents
    emb_dim: int = 128                 # noise / class / latent embedding width
    heads: int = 4                     # cross-attention heads
    dropout: float = 0.0


@dataclass
class EncoderConfig:
    width: int = 128                   # MLP hidden width / ViT width
    depth: int = 3                     # MLP layers / ViT blocks
    heads: int = 4                     # ViT heads
    patch: int = 4                     # ViT patch size


@dataclass
class PriorConfig:
    width: int = 64
    depth: int = 2
    heads: int = 4


@dataclass
class ModelConfig:
    data_shape: tuple[int, ...] = (2,)  # (D,) for vectors, (C, H, W) for images
    num_classes: int = 0               # 0 = unconditional
    m: int = 1                          # number of discrete latents (0 = plain EDM baseline)
    k: int = 8                          # codebook size per latent
    sigma_data: float = 0.5
    latent_dropout: float = 0.1         # per-sample probability of the null embedding (for CFG)
    gumbel_tau: float = 1.0             # Gumbel-softmax temperature
    straight_through: bool = False      # hard one-hot forward, soft gradient
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)

    @property
    def is_image(self) -> bool:
        return len(self.data_shape) == 3


@dataclass
class TrainConfig:
    steps: int = 2000                  # stage 1 (denoiser + encoder) optimiser steps
    batch: int = 256
    lr: float = 1e-3
    lr_warmup: int = 200               # linear warm-up steps
    lr_schedule: str = "constant"      # after warm-up: "constant" or "cosine" (to 0 at the last step; both stages)
    ema_halflife: float = 500.0        # EMA half-life in optimiser steps
    grad_clip: float = 1.0
    p_mean: float = -1.2               # EDM: ln(sigma) ~ N(p_mean, p_std^2)
    p_std: float = 1.2
    code_balance: float = 0.0         # weight of the code-usage balance term (0 = plain DisCo-Diff loss)
    tau_start: float = 0.0             # Gumbel temperature at step 0, annealed to model.gumbel_tau (0 = constant)
    prior_steps: int = 1000            # stage 2 (autoregressive prior)
    prior_batch: int = 256
    prior_lr: float = 2e-3
    sample_every: int = 0              # sample grid every N steps (0: only at the end)
    log_every: int = 50                # metrics.jsonl row every N steps
    save_every: int = 500              # resumable state every N steps (and on every signal)
    seed: int = 0


@dataclass
class DataSpec:
    kind: str = "preset"               # "preset" | "npy" | "folder" | "zip"
    path: str = ""
    preset: str = ""
    n: int = 0                          # preset: number of examples
    resolution: int = 0                 # images: resize to this (0 = keep)
    seed: int = 0


# ---------------------------------------------------------------------------------------------
# JSON round trip


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    return obj


def _typed(value: Any, default: Any, where: str) -> Any:
    """`value` checked (and converted where JSON loses the type) against the type of `default`."""
    def fail(what: str):
        raise ValueError(f"{where} must be {what}, got {value!r}")
    if isinstance(default, bool):
        return value if isinstance(value, bool) else fail("true or false")
    if isinstance(default, int):
        return value if isinstance(value, int) and not isinstance(value, bool) else fail("an integer")
    if isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return float(value) if ok else fail("a finite number")
    if isinstance(default, str):
        return value if isinstance(value, str) else fail("a string")
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            fail("a list of integers")
        return tuple(value)
    return value


def from_dict(cls: type, d: dict, where: str = "") -> Any:
    """Build dataclass `cls` from a dict, refusing unknown keys (a config from a newer schema) and values
    whose type differs from the field's default. Missing keys take the defaults."""
    where = where or cls.__name__
    if not isinstance(d, dict):
        raise ValueError(f"expected a JSON object for {where}, got {type(d).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(names)
    if unknown:
        raise ValueError(f"unknown {where} field(s): {', '.join(sorted(unknown))}")
    kwargs = {}
    for name, value in d.items():
        f = names[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            value = from_dict(type(default), value, f"{where}.{name}")
        else:
            value = _typed(value, default, f"{where}.{name}")
        kwargs[name] = value
    return cls(**kwargs)


def check_model(cfg: ModelConfig) -> ModelConfig:
    """Ranges a model config must hold (ValueError naming the first that does not)."""
    d, e, p = cfg.denoiser, cfg.encoder, cfg.prior
    rules = [
        (len(cfg.data_shape) in (1, 3) and all(s >= 1 for s in cfg.data_shape), "data_shape must be [D] or [C, H, W]"),
        (cfg.num_classes >= 0, "num_classes must be >= 0"), (cfg.m >= 0, "m must be >= 0"), (cfg.k >= 2, "k must be >= 2"),
        (cfg.sigma_data > 0, "sigma_data must be > 0"), (0 <= cfg.latent_dropout < 1, "latent_dropout must be in [0, 1)"),
        (cfg.gumbel_tau > 0, "gumbel_tau must be > 0"), (d.backbone in ("mlp", "unet"), "denoiser.backbone must be mlp or unet"),
        (d.backbone == ("unet" if cfg.is_image else "mlp"), "denoiser.backbone does not fit the data shape"),
        (min(d.width, d.depth, d.emb_dim, d.heads, e.width, e.depth, e.heads, e.patch, p.width, p.depth, p.heads) >= 1,
         "widths, depths, heads and patch must be >= 1"),
        (len(d.channel_mult) >= 1 and min(d.channel_mult) >= 1, "denoiser.channel_mult must be positive"),
        (all(0 <= a < len(d.channel_mult) for a in d.attn_levels), "denoiser.attn_levels must index channel_mult"),
        (0 <= d.dropout < 1, "denoiser.dropout must be in [0, 1)"),
        (p.width % p.heads == 0 and e.width % e.heads == 0, "prior and encoder widths must be divisible by their heads"),
    ]
    for ok, what in rules:
        if not ok:
            raise ValueError(what)
    return cfg


def check_train(tc: TrainConfig) -> TrainConfig:
    rules = [(tc.steps >= 0 and tc.prior_steps >= 0, "steps must be >= 0"), (tc.batch >= 1 and tc.prior_batch >= 1, "batch must be >= 1"),
             (tc.lr > 0 and tc.prior_lr > 0, "learning rates must be > 0"), (tc.lr_schedule in ("constant", "cosine"), "lr_schedule must be constant or cosine"),
             (tc.ema_halflife > 0, "ema_halflife must be > 0"), (tc.grad_clip >= 0, "grad_clip must be >= 0"),
             (tc.p_std > 0, "p_std must be > 0"), (tc.code_balance >= 0, "code_balance must be >= 0"),
             (tc.tau_start >= 0, "tau_start must be >= 0"), (min(tc.log_every, tc.save_every) >= 1, "log_every and save_every must be >= 1"),
             (tc.sample_every >= 0 and tc.lr_warmup >= 0 and tc.seed >= 0, "sample_every, lr_warmup and seed must be >= 0")]
    for ok, what in rules:
        if not ok:
            raise ValueError(what)
    return tc


def replace(obj: Any, **changes: Any) -> Any:
    return dataclasses.replace(obj, **changes)
