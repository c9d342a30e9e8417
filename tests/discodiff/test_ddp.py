"""Two-process DDP training on CPU (gloo) under torchrun."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import VENV_BIN, free_port
from discodiff import checkpoint as ckpt
from discodiff import presets
from discodiff.networks import DisCoDiff
from discodiff.sampling import sample
from discodiff.train.metrics import read_metrics

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("ddp_worker.py")


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(VENV_BIN / "torchrun"), "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), *args]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=240)
    assert p.returncode == 0, p.stderr[-4000:]
    return p


def test_torchrun_cli_trains_and_rank0_writes(tmp_path):
    out = tmp_path / "run"
    _torchrun(["-m", "discodiff.train.cli", "--preset", "toy8-tiny", "--out", str(out), "--quiet",
               "--steps", "6", "--prior-steps", "4"], tmp_path)
    info = ckpt.read_info(out / "model.safetensors")
    assert info["train"]["world_size"] == 2 and info["train"]["steps"] == 6 and info["train"]["prior_steps"] == 4
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows if r["stage"] == 1] == [5, 6]   # one writer: no duplicated lines
    assert [r["step"] for r in rows if r["stage"] == 2] == [4]
    assert json.loads((out / "training_options.json").read_text())["train"]["steps"] == 6
    assert not (tmp_path / "runs").exists()
    model, _ = ckpt.load_model(out / "model.safetensors")
    s = sample(model, np.arange(4), steps=4)
    assert np.isfinite(s.x).all()


def test_both_ranks_end_with_identical_weights(tmp_path):
    out, ranks = tmp_path / "run", tmp_path / "ranks"
    _torchrun([str(WORKER), str(out), str(ranks), "6", "4"], tmp_path)
    r0, r1 = load_file(str(ranks / "rank0.safetensors")), load_file(str(ranks / "rank1.safetensors"))
    assert r0.keys() == r1.keys()
    assert {k.split(".")[0] for k in r0} == {"raw", "ema"}
    assert any(k.startswith("raw.prior.") for k in r0)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k

    # The recorded tensors are the run's: rank 0's EMA denoiser/encoder and raw prior are what it saved.
    saved = load_file(str(out / "model.safetensors"))
    for k, v in saved.items():
        src = f"raw.{k}" if k.startswith("prior.") else f"ema.{k}"
        assert torch.equal(r0[src], v), k

    # Not vacuous: training moved the weights away from their (rank-identical) initialisation,
    # while each rank drew different batches (seeded by rank), so only averaged gradients keep them equal.
    _, cfg, _ = presets.get("toy8-tiny")
    torch.manual_seed(0)
    init = DisCoDiff(cfg).state_dict()
    moved = [k for k, v in init.items() if not torch.equal(v, r0[f"raw.{k}"])]
    assert any(k.startswith("denoiser.") for k in moved) and any(k.startswith("encoder.") for k in moved)
    assert any(k.startswith("prior.") for k in moved)
