"""Checkpoints: safetensors tensors + JSON metadata, written atomically, loaded without pickle.

- `model.safetensors`: the three networks' sampling weights (EMA for denoiser and encoder) under the
  prefixes `denoiser.`, `encoder.`, `prior.`; metadata `discodiff` = JSON {schema, model config, data}.
- `train_state.safetensors`: everything `--resume` needs (raw weights, EMA, optimiser state, RNG
  states, step counters), with nested Python state flattened into tensors + JSON.
"""
from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from discodiff.atomic import atomic_write
from discodiff.config import SCHEMA_VERSION, ModelConfig, check_model, from_dict, to_dict
from discodiff.errors import UserError
from discodiff.jsonfile import parse_json

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


def read_header(path: Path) -> dict:
    """The safetensors header (tensor names -> dtype/shape/offsets, and __metadata__), read with the
    standard library only."""
    path = Path(path)
    if path.exists() and not path.is_file():  # a folder, a FIFO (which would block), a device
        raise UserError(f"checkpoint {path} is not a regular file; pass the model.safetensors file of a run")
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; train one with discodiff-train or pass its path")
    hint = "it may be truncated or edited, retrain or re-copy it"
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:
                raise ValueError("header too large")
            text = f.read(n)
    except (struct.error, ValueError) as e:
        raise UserError(f"{path} is not a valid safetensors file ({e}); {hint}") from None
    header = parse_json(text, f"the safetensors header of {path}", hint)
    if not isinstance(header, dict) or not all(isinstance(v, dict) for v in header.values()):
        raise UserError(f"{path} is not a valid safetensors file (its header is not a JSON object of objects); {hint}")
    return header


def read_metadata(path: Path) -> dict[str, str]:
    meta = read_header(path).get("__metadata__") or {}
    if not all(isinstance(v, str) for v in meta.values()):
        raise UserError(f"{path} is not a valid safetensors file (a metadata value is not a string); the file was "
                        "edited or damaged")
    return meta


def read_info(path: Path, key: str = META_KEY) -> dict:
    meta = read_metadata(path)
    if key not in meta:
        raise UserError(f"{path} is a safetensors file but not a DisCo-Diff checkpoint (no '{key}' metadata)")
    info = parse_json(meta[key], f"{path}: its '{key}' metadata", "the file was edited or damaged")
    if not isinstance(info, dict) or info.get("schema") != SCHEMA_VERSION:
        schema = info.get("schema") if isinstance(info, dict) else None
        raise UserError(f"{path} has checkpoint schema {schema!r}, this toolkit reads schema "
                        f"{SCHEMA_VERSION}; use the toolkit version that wrote it")
    return info


def model_config(path: Path, info: dict) -> ModelConfig:
    """The checkpoint's model config, checked field by field."""
    try:
        return check_model(from_dict(ModelConfig, info["model"], "model"))
    except KeyError:
        raise UserError(f"{path}: its metadata has no 'model' config; the file was edited or damaged") from None
    except (ValueError, TypeError) as e:
        raise UserError(f"{path}: its model config is invalid ({e}); the file was edited or damaged") from None


def check_tensors(path: Path, module: torch.nn.Module, prefix: str = "") -> None:
    """The file's tensors are exactly the module's, with the same shapes; one line naming the first
    difference (before anything is loaded or allocated from the file)."""
    header = {k: v for k, v in read_header(path).items() if k != "__metadata__"}
    want = {prefix + k: list(v.shape) for k, v in module.state_dict().items()}
    for name, shape in want.items():
        if name not in header:
            raise UserError(f"{path} does not match its own config: tensor {name} is missing; the file was edited or damaged")
        if header[name].get("shape") != shape:
            raise UserError(f"{path} does not match its own config: {name} has shape {header[name].get('shape')}, the "
                            f"config gives {shape}; the file was edited or damaged")
    extra = sorted(set(header) - set(want))
    if extra:
        raise UserError(f"{path} does not match its own config: unexpected tensor {extra[0]}; the file was edited or damaged")


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"cannot read tensors from {path} ({e}); the file is damaged, retrain or re-copy it")


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """save_file through a temp file; safetensors reports I/O failures (a full disk) as its own error
    type from Rust, which is turned back into the OSError it is."""
    def write(tmp: str) -> None:
        try:
            save_file(tensors, tmp, metadata=metadata)
        except SafetensorError as e:
            code = re.search(r"os error (\d+)", str(e))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), tmp) from None

    atomic_write(path, write)


# ---------------------------------------------------------------------------------------------
# Model checkpoint


def save_model(path: Path, model: torch.nn.Module, cfg: ModelConfig, extra: dict | None = None) -> None:
    """Write the model's tensors and {schema, model config, **extra} as safetensors metadata, atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    info = {"schema": SCHEMA_VERSION, "model": to_dict(cfg), **(extra or {})}
    _save_tensors(path, tensors, {META_KEY: json.dumps(info)})


def load_model(path: Path, device: str | torch.device = "cpu"):
    """-> (DisCoDiff in eval mode, info dict). No pickle: safetensors + JSON only; the config and every
    tensor shape are checked before loading."""
    from discodiff.networks import DisCoDiff

    info = read_info(path)
    cfg = model_config(path, info)
    try:
        model = DisCoDiff(cfg)
    except ValueError as e:
        raise UserError(f"{path}: its model config cannot be built ({e}); the file was edited or damaged") from None
    check_tensors(path, model)
    model.load_state_dict(_load_tensors(path), strict=True)
    return model.to(device).eval(), info


# ---------------------------------------------------------------------------------------------
# Training state (for --resume)


def save_state(path: Path, state: dict) -> None:
    """Write nested training state (state dicts, optimiser state, counters) as tensors + JSON, atomically."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten(state, "s", tensors)
    meta = {META_KEY + "_state": json.dumps({"schema": SCHEMA_VERSION, "state": skeleton})}
    _save_tensors(path, tensors, meta)


def load_state(path: Path) -> dict:
    """The nested state `save_state` wrote (no pickle: tensors from safetensors, the rest from JSON)."""
    info = read_info(path, key=META_KEY + "_state")
    tensors = _load_tensors(path)
    try:
        return unflatten(info["state"], tensors)
    except (KeyError, TypeError, ValueError, RecursionError) as e:  # missing keys, wrong types, absurd nesting
        raise UserError(f"{path}: its training state is damaged ({type(e).__name__}); the run cannot be continued, "
                        "start it again with --overwrite") from None
