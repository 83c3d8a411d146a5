"""benchmarks/sparsity_bound_minilm.py: the oracles' keep rules, on random probabilities (no MiniLM needed)."""

from __future__ import annotations

import pytest
import torch
from bench_scripts import load


@pytest.fixture(scope="module")
def sb():
    return load("sparsity_bound_minilm")


def _probs(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(*shape, generator=g), dim=-1)


def test_mass_keeps_the_fewest_top_keys_holding_tau(sb):
    p = _probs(2, 3, 5, 40)
    keep = sb._keep_mass(p, 0.9)
    held = (p * keep).sum(-1)
    assert bool((held >= 0.9 - 1e-6).all())
    # dropping the smallest kept key falls below tau: no row keeps more than it needs
    smallest = torch.where(keep, p, torch.inf).min(-1).values
    assert bool((held - smallest < 0.9).all())


def test_block_mass_keeps_whole_blocks(sb):
    p = _probs(1, 2, 4, 30)  # 30 keys: the last block of 8 is ragged
    keep = sb._keep_block_mass(p, (0.8, 8))
    assert keep.shape == p.shape
    padded = torch.nn.functional.pad(keep, (0, 2)).unflatten(-1, (-1, 8))
    whole = padded[..., :-1, :]
    assert bool(((whole.all(-1)) | (~whole.any(-1))).all())  # each full block all kept or all dropped
    assert bool(((p * keep).sum(-1) >= 0.8 - 1e-6).all())


def test_head_budgets_keep_the_counts_measured_on_other_inputs(sb):
    budgets = sb.HeadBudgets(layers=2)
    budgets.measuring = True
    calib = [_probs(2, 3, 6, 20, seed=s) for s in range(4)]  # two batches through two layers
    for p in calib:
        assert bool(budgets(p, 0.9).all())  # measuring keeps everything
    budgets.measuring, budgets.call = False, 0
    for layer in range(2):
        want = torch.stack([sb._keep_mass(calib[b * 2 + layer], 0.9).float().sum(-1).mean(dim=(0, 2))
                            for b in range(2)]).mean(0).round().clamp(min=1)
        p = _probs(1, 3, 6, 20, seed=10 + layer)
        keep = budgets(p, 0.9)
        assert torch.equal(keep.sum(-1), want.view(1, 3, 1).expand(1, 3, 6).long())
        # and the kept keys are each row's largest
        kth = torch.where(keep, p, torch.inf).min(-1).values
        dropped = torch.where(keep, -torch.inf, p).max(-1).values
        assert bool((kth >= dropped).all())
