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
- ``block mass``: the same over blocks of 16 (``--key-blocks``) consecutive keys, scored by their
  summed probability (what a block-sparse kernel with a perfect block predictor
  could do);
- ``head top-k``: every query of a head keeps the same number of keys, its largest
  scores, the number fixed per head in advance from the *calibration* texts (the
  mean count ``mass`` keeps there for that head at tau). It bounds what a per-head
  choice made offline (tune's design, DuoAttention's, MInference's) could reach if
  it also picked each query's best keys: budgets that adapt per head but not per query.

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
KEY_BLOCKS = (16,)  # --key-blocks


def _keep_top_fraction(p: torch.Tensor, fraction: float) -> torch.Tensor:
    k = max(1, round(fraction * p.shape[-1]))
    return p >= p.topk(k, dim=-1).values[..., -1:]


def _keep_mass(p: torch.Tensor, tau: float) -> torch.Tensor:
    """The fewest largest entries of each row holding a share tau of its mass (at least one)."""
    ps, idx = p.sort(-1, descending=True)
    keep_sorted = (ps.cumsum(-1) - ps) < tau
    return torch.zeros_like(keep_sorted).scatter(-1, idx, keep_sorted)


def _keep_block_mass(p: torch.Tensor, setting: tuple[float, int]) -> torch.Tensor:
    tau, size = setting
    m = p.shape[-1]
    pad = (-m) % size
    blocks = torch.nn.functional.pad(p, (0, pad)).unflatten(-1, (-1, size)).sum(-1)
    keep = _keep_mass(blocks, tau).repeat_interleave(size, dim=-1)
    return keep[..., :m]


class HeadBudgets:
    """``head top-k``: per (layer, head) a fixed share of keys, measured on other texts by ``mass``.

    With ``measuring`` set, it records, call by call (one call per layer and batch), each head's mean
    count of keys ``mass`` keeps; otherwise it keeps that many top keys for every query of the head,
    layer by layer in call order (the model runs its layers in order, once per batch).
    """

    def __init__(self, layers: int):
        self.layers, self.counts, self.call, self.measuring = layers, {}, 0, False

    def __call__(self, p: torch.Tensor, tau: float) -> torch.Tensor:
        layer = self.call % self.layers
        self.call += 1
        if self.measuring:
            self.counts.setdefault((tau, layer), []).append(_keep_mass(p, tau).float().sum(-1).mean(dim=(0, 2)))
            return torch.ones_like(p, dtype=torch.bool)
        per_head = torch.stack(self.counts[(tau, layer)]).mean(0).round().clamp(min=1).long()  # (H,)
        ranked = p.argsort(-1, descending=True).argsort(-1)  # each key's rank in its row
        return ranked < per_head.view(1, -1, 1, 1)


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


def run_n(n: int, tokenizer, model, log=print, key_blocks=KEY_BLOCKS) -> list[dict]:
    from transformers import AttentionInterface

    ids, mask = tm.texts(tokenizer, n, tm.HELD_OUT, len(tm.HELD_OUT))
    module = qm.TokenStates(model).eval()
    model.set_attn_implementation("eager")
    dense = tm.pooled(module, ids, mask)
    oracle = Oracle()
    AttentionInterface.register("attnopt_oracle", oracle)
    model.set_attn_implementation("attnopt_oracle")
    rows = []
    budgets = HeadBudgets(model.config.num_hidden_layers)
    calib_ids, calib_mask = tm.texts(tokenizer, n, qm.PARAGRAPHS, tm.CALIBRATION_TEXTS)
    budgets.measuring = True
    for tau in MASSES:
        oracle.rule, oracle.setting = budgets, tau
        tm.pooled(module, calib_ids, calib_mask)
    budgets.measuring = False
    settings = ([("top-k", _keep_top_fraction, f) for f in FRACTIONS] + [("mass", _keep_mass, t) for t in MASSES]
                + [(f"block mass (blocks of {size})", _keep_block_mass, (t, size))
                   for size in key_blocks for t in MASSES]
                + [("head top-k (budgets from calibration texts)", budgets, t) for t in MASSES])
    for name, rule, setting in settings:
        budgets.call = 0
        oracle.rule, oracle.setting, oracle.kept = rule, setting, []
        cos = qm.cosine(tm.pooled(module, ids, mask), dense)
        tau_or_share = setting[0] if isinstance(setting, tuple) else setting  # a block size is in the name
        row = {"n": n, "oracle": name, "setting": tau_or_share, "keys": sum(oracle.kept) / len(oracle.kept),
               "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}
        log(f"N={n} {name} {tau_or_share}: keys {row['keys']:.3f}, held-out cosine {row['mean_cosine']:.4f} "
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
        if r["oracle"].startswith("head top-k"):
            setting = f"per-head counts of mass tau = {r['setting']}"
        lines.append(f"| {r['n']} | {r['oracle']} | {setting} | {r['keys']:.3f} | {r['mean_cosine']:.4f} | "
                     f"{r['min_cosine']:.4f} |")
    lines += ["", "```", command, "```"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--md", type=Path)
    parser.add_argument("--key-blocks", type=int, nargs="+", default=list(KEY_BLOCKS),
                        help="block sizes for the block-mass oracle (default 16)")
    args = parser.parse_args(argv)
    tokenizer, model, _ = qm.load_minilm()
    rows = [r for n in args.n for r in run_n(n, tokenizer, model, key_blocks=args.key_blocks)]
    md = markdown(rows, ("python benchmarks/sparsity_bound_minilm.py " + " ".join(map(shlex.quote, argv))).strip())
    print(md)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
