"""How few keys can the real MiniLM attend to and keep 0.98? Oracle sparse attention, for tune's target (issue 11).

`attnopt tune` chooses among patterns fixed in advance (segmented, window, memory,
hierarchical) and keeps the model's pooled-embedding cosine >= the budget. This
script asks what ANY sparse attention over exact keys could reach on the same model,
texts and measure: each query keeps keys chosen by an oracle that knows the exact
softmax (something no variant can know without computing every score), the rest
masked, one softmax over what is kept:

- ``top-k``: every query of every head keeps the same fraction of its keys, its
  largest scores (a uniform budget, the best any fixed-size selection can do);
- ``mass``: every query keeps its largest-probability keys until they hold a share
  tau of its softmax mass (an adaptive budget: peaked rows keep few keys);
- ``block mass``: the same over blocks of 16 consecutive keys, scored by their
  summed probability (what a block-sparse kernel with a perfect block predictor
  could do).

Reported: the held-out texts' mean (and min) pooled cosine against dense and the
mean fraction of keys kept, over every site, head and query. The model runs
through transformers' attention interface, the texts are tune_minilm.py's
held-out ones. It asserts nothing: it is a benchmark.

    python benchmarks/sparsity_bound_minilm.py --n 256 512 --md out/bound.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality_minilm as qm  # noqa: E402 - the model, pooling and cosine
import tune_minilm as tm  # noqa: E402 - the held-out texts and batched pooling

FRACTIONS = (0.1, 0.2, 0.3, 0.35, 0.5)
MASSES = (0.8, 0.85, 0.9, 0.95)
KEY_BLOCK = 16


def _keep_top_fraction(p: torch.Tensor, fraction: float) -> torch.Tensor:
    k = max(1, round(fraction * p.shape[-1]))
    return p >= p.topk(k, dim=-1).values[..., -1:]


def _keep_mass(p: torch.Tensor, tau: float) -> torch.Tensor:
    """The fewest largest entries of each row holding a share tau of its mass (at least one)."""
    ps, idx = p.sort(-1, descending=True)
    keep_sorted = (ps.cumsum(-1) - ps) < tau
    return torch.zeros_like(keep_sorted).scatter(-1, idx, keep_sorted)


def _keep_block_mass(p: torch.Tensor, tau: float) -> torch.Tensor:
    m = p.shape[-1]
    pad = (-m) % KEY_BLOCK
    blocks = torch.nn.functional.pad(p, (0, pad)).unflatten(-1, (-1, KEY_BLOCK)).sum(-1)
    keep = _keep_mass(blocks, tau).repeat_interleave(KEY_BLOCK, dim=-1)
    return keep[..., :m]


class Oracle:
    """A transformers attention function keeping what ``rule(probabilities, setting)`` says; counts what it kept."""

    def __init__(self):
        self.rule, self.setting, self.kept = None, None, []

    def __call__(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        scores = (query @ key.transpose(-1, -2)) * scale
        if attention_mask is not None and attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, float("-inf"))
        elif attention_mask is not None:
            scores = scores + attention_mask
        keep = self.rule(torch.softmax(scores, dim=-1), self.setting)
        self.kept.append(float(keep.float().mean()))
        out = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1) @ value
        return out.transpose(1, 2).contiguous(), None


def run_n(n: int, tokenizer, model, log=print) -> list[dict]:
    from transformers import AttentionInterface

    ids, mask = tm.texts(tokenizer, n, tm.HELD_OUT, len(tm.HELD_OUT))
    module = qm.TokenStates(model).eval()
    model.set_attn_implementation("eager")
    dense = tm.pooled(module, ids, mask)
    oracle = Oracle()
    AttentionInterface.register("attnopt_oracle", oracle)
    model.set_attn_implementation("attnopt_oracle")
    rows = []
    settings = ([("top-k", _keep_top_fraction, f) for f in FRACTIONS] + [("mass", _keep_mass, t) for t in MASSES]
                + [(f"block mass (blocks of {KEY_BLOCK})", _keep_block_mass, t) for t in MASSES])
    for name, rule, setting in settings:
        oracle.rule, oracle.setting, oracle.kept = rule, setting, []
        cos = qm.cosine(tm.pooled(module, ids, mask), dense)
        row = {"n": n, "oracle": name, "setting": setting, "keys": sum(oracle.kept) / len(oracle.kept),
               "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}
        log(f"N={n} {name} {setting}: keys {row['keys']:.3f}, held-out cosine {row['mean_cosine']:.4f} "
            f"(min {row['min_cosine']:.4f})")
        rows.append(row)
    model.set_attn_implementation("eager")
    return rows


def markdown(rows: list[dict], command: str) -> str:
    lines = [f"Oracle sparse attention on MiniLM ({qm.PACKAGE}), {len(tm.HELD_OUT)} held-out texts "
             f"(torch {torch.__version__}, CPU).", "",
             "| N | oracle | setting | keys kept | held-out mean cosine | held-out min cosine |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        setting = f"{r['setting']:.0%} of keys" if r["oracle"] == "top-k" else f"tau = {r['setting']}"
        lines.append(f"| {r['n']} | {r['oracle']} | {setting} | {r['keys']:.3f} | {r['mean_cosine']:.4f} | "
                     f"{r['min_cosine']:.4f} |")
    lines += ["", "```", command, "```"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--md", type=Path)
    args = parser.parse_args(argv)
    tokenizer, model, _ = qm.load_minilm()
    rows = [r for n in args.n for r in run_n(n, tokenizer, model)]
    md = markdown(rows, ("python benchmarks/sparsity_bound_minilm.py " + " ".join(map(shlex.quote, argv))).strip())
    print(md)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
