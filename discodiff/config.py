"""Model and training configuration, presets, and their JSON form.

Torch-free on purpose: the exporter, the runtime tests and the benchmarks read configs without torch.
A config is a tree of dataclasses; `to_dict`/`from_dict` give the JSON that travels inside the
checkpoint's safetensors metadata (no pickle anywhere).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1

# EDM defaults (Karras et al. 2022, Table 1).
SIGMA_MIN = 0.002
SIGMA_MAX = 80.0
RHO = 7.0


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
    log_every: int = 50
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


def from_dict(cls: type, d: dict) -> Any:
    """Build dataclass `cls` from a dict, refusing unknown keys (a config from a newer schema)."""
    if not isinstance(d, dict):
        raise ValueError(f"expected a JSON object for {cls.__name__}, got {type(d).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(sorted(unknown))}")
    kwargs = {}
    for name, value in d.items():
        f = names[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            value = from_dict(type(default), value)
        elif isinstance(default, tuple):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def replace(obj: Any, **changes: Any) -> Any:
    return dataclasses.replace(obj, **changes)
