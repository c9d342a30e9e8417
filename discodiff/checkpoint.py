"""Checkpoints: safetensors tensors + JSON metadata, written atomically, loaded without pickle.

- `model.safetensors`: the three networks' sampling weights (EMA for denoiser and encoder) under the
  prefixes `denoiser.`, `encoder.`, `prior.`; metadata `discodiff` = JSON {schema, model config, data}.
- `train_state.safetensors`: everything `--resume` needs (raw weights, EMA, optimiser state, RNG
  states, step counters), with nested Python state flattened into tensors + JSON.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import atomic_write
from .config import SCHEMA_VERSION, ModelConfig, from_dict, to_dict
from .errors import UserError
from .rundir import MODEL_FILE, STATE_FILE  # noqa: F401 - re-exported: the run files have one home

META_KEY = "discodiff"


# ---------------------------------------------------------------------------------------------
# Flattening nested state (optimizer state dicts, RNG states) into tensors + JSON


def flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor leaf by {"__tensor__": key}, collecting the tensors; returns the JSON part."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[flatten(k, f"{prefix}.k{i}", tensors), flatten(v, f"{prefix}.{i}", tensors)]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        items = [flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix} in a checkpoint")


def unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(unflatten(v, tensors) for v in obj["__tuple__"])
        return {unflatten(k, tensors): unflatten(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------
# Reading


def read_metadata(path: Path) -> dict[str, str]:
    """The safetensors header's __metadata__, read with the standard library only."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; train one with discodiff-train or pass its path")
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:
                raise ValueError("header too large")
            header = json.loads(f.read(n))
        return header.get("__metadata__") or {}
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not a valid safetensors file ({e}); it may be truncated, retrain or re-copy it")


def read_info(path: Path, key: str = META_KEY) -> dict:
    meta = read_metadata(path)
    if key not in meta:
        raise UserError(f"{path} is a safetensors file but not a DisCo-Diff checkpoint (no '{key}' metadata)")
    info = json.loads(meta[key])
    if info.get("schema") != SCHEMA_VERSION:
        raise UserError(f"{path} has checkpoint schema {info.get('schema')}, this toolkit reads schema "
                        f"{SCHEMA_VERSION}; use the toolkit version that wrote it")
    return info


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"cannot read tensors from {path} ({e}); the file is damaged, retrain or re-copy it")


# ---------------------------------------------------------------------------------------------
# Model checkpoint


def save_model(path: Path, model: torch.nn.Module, cfg: ModelConfig, extra: dict | None = None) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    info = {"schema": SCHEMA_VERSION, "model": to_dict(cfg), **(extra or {})}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={META_KEY: json.dumps(info)}))


def load_model(path: Path, device: str | torch.device = "cpu"):
    """-> (DisCoDiff in eval mode, info dict). No pickle: safetensors + JSON only."""
    from .networks import DisCoDiff

    info = read_info(path)
    cfg = from_dict(ModelConfig, info["model"])
    model = DisCoDiff(cfg)
    tensors = _load_tensors(path)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise UserError(f"{path} does not match its own config (missing {missing[:3]}, unexpected {unexpected[:3]}); "
                        "the file is damaged or was edited")
    return model.to(device).eval(), info


# ---------------------------------------------------------------------------------------------
# Training state (for --resume)


def save_state(path: Path, state: dict) -> None:
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten(state, "s", tensors)
    meta = {META_KEY + "_state": json.dumps({"schema": SCHEMA_VERSION, "state": skeleton})}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_state(path: Path) -> dict:
    info = read_info(path, key=META_KEY + "_state")
    return unflatten(info["state"], _load_tensors(path))
