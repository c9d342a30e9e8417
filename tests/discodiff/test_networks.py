"""Units of the networks that end-to-end runs only reach indirectly: the latent embedding's two paths,
the Gumbel relaxation's null-code dropout, the mixed-fp16 conversion, and the prior's input ids in the
recompute forward against the one-position step."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from discodiff import presets
from discodiff.config import replace
from discodiff.networks import DisCoDiff, Denoiser, gumbel_weights, to_mixed_fp16
from discodiff.networks.layers import LatentEmbedding


def test_one_hot_weights_equal_the_hard_lookup():
    torch.manual_seed(0)
    emb = LatentEmbedding(m=3, k=5, dim=7)
    tokens = torch.tensor([[0, 4, 5], [5, 2, 1]])                 # 5 = k: the null code
    hard = emb(tokens=tokens)
    soft = emb(weights=F.one_hot(tokens, 6).float())
    assert hard.shape == (2, 3, 7)
    torch.testing.assert_close(soft, hard, rtol=0, atol=1e-6)
    # each latent has its own table: the same code in two latents embeds differently
    same = emb(tokens=torch.tensor([[1, 1, 1]]))[0]
    assert not torch.allclose(same[0], same[1])


def test_gumbel_weights_rows_sum_to_one_and_dropout_uses_the_null_column():
    logits = torch.randn(4000, 2, 4)
    g = torch.Generator().manual_seed(0)
    w = gumbel_weights(logits, tau=1.0, hard=False, dropout=0.25, generator=g)
    assert w.shape == (4000, 2, 5)
    torch.testing.assert_close(w.sum(-1), torch.ones(4000, 2))
    dropped = w[:, :, 4] == 1.0                                      # the whole sample is null
    assert torch.equal(dropped[:, 0], dropped[:, 1])
    assert torch.all(w[dropped[:, 0]][:, :, :4] == 0)
    assert torch.all(w[~dropped[:, 0]][:, :, 4] == 0)                # never partly null
    assert 0.22 < dropped[:, 0].float().mean().item() < 0.28
    hard = gumbel_weights(logits, tau=1.0, hard=True, dropout=0.0, generator=torch.Generator().manual_seed(0))
    assert set(hard[:, :, :4].sum(-1).round(decimals=5).unique().tolist()) == {1.0}
    assert torch.all((hard[:, :, :4] - hard[:, :, :4].round()).abs() < 1e-6)   # one-hot forward


def test_gumbel_weights_without_dropout_never_use_the_null_column():
    w = gumbel_weights(torch.randn(500, 1, 3), 0.5, False, 0.0, torch.Generator().manual_seed(1))
    assert torch.all(w[:, :, 3] == 0)


def _model(preset: str):
    torch.manual_seed(0)
    return DisCoDiff(presets.get(preset)[1])


@pytest.mark.parametrize("preset", ["toy8-tiny", "shapes-tiny"])
def test_mixed_fp16_keeps_its_fp32_modules(preset):
    model = _model(preset)
    den = to_mixed_fp16(model.denoiser)
    fp32_names = {f"{m}.{n}" for m in Denoiser.FP32_MODULES for n, _ in getattr(den, m).named_parameters()}
    assert fp32_names
    halves = {n for n, p in den.named_parameters() if p.dtype == torch.float16}
    assert halves and not (halves & fp32_names)
    for n, p in den.named_parameters():
        if "norm" in n or "emb" in n.split(".")[0] or n == "register" or n.startswith("latent_emb"):
            assert p.dtype == torch.float32, n
    # it still runs, in float32 at its ends, close to the float32 model
    ref = _model(preset).denoiser
    cfg = model.cfg
    x = torch.randn(3, *cfg.data_shape)
    sigma = torch.tensor([0.01, 1.0, 50.0])
    kw = {"tokens": torch.randint(cfg.k + 1, (3, cfg.m)), "class_labels": torch.randint(cfg.num_classes, (3,)) if cfg.num_classes else None}
    with torch.no_grad():
        out, want = den(x, sigma, **kw), ref(x, sigma, **kw)
    assert out.dtype == torch.float32
    assert torch.linalg.norm(out - want) / torch.linalg.norm(want) < 1e-2


@pytest.mark.parametrize("preset", ["toy8-tiny", "shapes-tiny"])
def test_prior_ids_of_the_step_equal_those_of_the_recompute_forward(preset):
    """Position 0 holds the label (0..num_classes), later positions codes offset by num_classes + 1: the
    step's arithmetic must give the ids `input_ids` gives the whole sequence."""
    cfg = replace(presets.get(preset)[1], m=4)
    torch.manual_seed(0)
    prior = DisCoDiff(cfg).prior.eval()
    seq = torch.cat([torch.randint(cfg.num_classes + 1, (6, 1)), torch.randint(cfg.k, (6, 3))], 1).int()
    ids = prior.input_ids(seq)
    assert torch.equal(ids[:, 0], seq[:, 0])
    assert torch.equal(ids[:, 1:], seq[:, 1:] + cfg.num_classes + 1)
    assert ids.max() < prior.tok_emb.num_embeddings
    k = torch.zeros(prior.cache_shape(6))
    v = torch.zeros_like(k)
    with torch.no_grad():
        full = prior(seq)
        for pos in range(cfg.m):
            logits, k, v = prior.step(seq[:, pos], torch.tensor([pos], dtype=torch.int32), k, v)
            torch.testing.assert_close(logits, full[:, pos], rtol=0, atol=1e-5)
    # a label id and a code id with the same number embed differently (the offset is real)
    a = prior.tok_emb(torch.tensor([1]))
    b = prior.tok_emb(prior.input_ids(torch.tensor([[0, 1]]))[:, 1])
    assert not torch.allclose(a, b)
    assert np.isfinite(full.numpy()).all()
