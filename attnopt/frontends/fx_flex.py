"""FlexAttention calls as attention sites: what their ``mask_mod`` allows, read by running it.

torch.export records ``flex_attention(q, k, v, score_mod=..., block_mask=...)`` (transformers'
``attn_implementation="flex_attention"`` among others) as the higher-order op
``flex_attention(q, k, v, score_mod, block_mask, scale, kernel_options, score_buffers, mask_buffers)``:
the score and mask functions are subgraphs, and the block mask a tuple of block tables built in the
graph from the mask function, ending with its subgraph.

A site is read when its score_mod returns the scaled score, or c·tanh(s/c) of it alone (Gemma 2's
softcap: run over a range of scores and compared, c one of its constants). Its mask_mod is then *run*,
not parsed, the way mask_analysis reads a mask construction:

- a mask_mod of the indices alone is run here over index grids of a few lengths (one past the largest
  integer it holds: a sliding window of 4096 is plain causal at every shorter length) and every batch
  row and head it might tell apart; open or exactly causal, the site is plain or causal SDPA;
- any other (one that reads tensors: transformers' packed-sequence ids, document ids; a window) becomes
  the site's mask term, a View-only value (``FlexMask``) that the probe evaluates with the tensors it
  reads, so mask_analysis finds causality, key padding and causal windows in it on its probe inputs. A
  term with no structure read (a per-head or document mask) stays a dense term, which the rewritten model
  computes whole for the op by running the mask_mod (``materialize``), O(N·M) like any dense mask term.

Any other score_mod, a block mask from outside the graph (its tables may skip blocks the mask_mod allows)
or a read log-sum-exp leave the site dense from detection on, with the reason: a rewrite that ignored
them would be silently wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx

from ..site import LAYOUT_BHSD, MASK_BOOLEAN

# The longest index grid a mask_mod is run over here; one with a larger constant (a window of 8192) is left
# to mask_analysis's probe.
MAX_PROBE_LENGTH = 4096
_PROBE_LENGTHS = (7, 33)  # differ from every head count and block size the tests use


def is_flex_attention(node: fx.Node) -> bool:
    """torch's FlexAttention as torch.export records it: the higher-order op ``flex_attention``."""
    return isinstance(node.target, torch._ops.HigherOrderOperator) and node.target.name() == "flex_attention"


def flex_attrs(gm: fx.GraphModule, node: fx.Node, args) -> dict:
    """The fused-site attributes of a FlexAttention call (q, k, v are (B, H, S, D), like SDPA's)."""
    attrs = {"form": "flex_attention", "layout": LAYOUT_BHSD, "q_port": 0, "k_port": 1, "v_port": 2,
             "mask_port": None, "causal": False, "scale": args[5] if len(args) > 5 else None}
    read = _read(gm, node, args)
    if isinstance(read, str):
        attrs["unsupported"] = f"FlexAttention: {read}, so the site is left as it is"
        return attrs
    causal_or_mask, attrs["output_node"], attrs["softcap"] = read
    if isinstance(causal_or_mask, FlexMask):  # the lifter makes it a View value, the site's mask term
        attrs["flex_mask"], attrs["mask_port"], attrs["mask_kind"] = causal_or_mask, 3, MASK_BOOLEAN
    else:
        attrs["causal"] = causal_or_mask
    return attrs


@dataclass(frozen=True)
class FlexMask:
    """A mask_mod that only a probe run of the graph reads (``evaluate``), or the rewritten model computes
    (``materialize``): it reads tensors of the graph (``buffers``), or allows something other than every key
    or the causal ones. ``lengths`` are the query and key lengths the block mask was built for (fx nodes, or
    ints at static shapes); ``constants`` the mask_mod's own integers (lengths it may compare against, which
    mask_analysis probes one past); ``heads`` the query heads."""

    mask_mod: fx.GraphModule
    lengths: tuple
    buffers: tuple
    constants: tuple[int, ...]
    heads: object
    query: fx.Node  # its batch rows and heads size a materialised mask
    mask_mod_target: str  # its get_attr target: where its ops cannot be copied, the rewritten model calls it


# The most (batch row, head, query, key) entries one run of a mask_mod may fill: a mask_mod that reads its
# head index is run for every head, and one past a window's length may be long.
MAX_GRID = 1 << 25


def evaluate(mask: FlexMask, lengths, buffers) -> torch.Tensor:
    """What the mask_mod allows at these lengths: (B | 1, H | 1, N, M), over the buffers' batch rows."""
    n, m = (int(x) for x in lengths)
    batch = (buffers[0].shape[0] if buffers[0].dim() else 1) if buffers else 3
    return _run(mask.mask_mod, batch, mask.heads, n, m, buffers)


def materialize(graph: fx.Graph, mask: FlexMask) -> fx.Node:
    """Nodes of ``graph`` computing the mask in the rewritten model (B | 1, H | 1, N, M), for an op that reads it as
    a dense term: the mask_mod's own ops, copied in over index ranges, so the model still exports. One that reads
    attributes of its own (indexing a tensor through torch's ``flat_apply``) is called instead: exact in torch, but
    torch.export, and so the ONNX export, refuses such a call."""
    if any(n.op in ("get_attr", "call_module") for n in mask.mask_mod.graph.nodes):
        return graph.call_function(allowed_mask, (graph.get_attr(mask.mask_mod_target), mask.query, *mask.lengths,
                                                  *mask.buffers))
    b_read, h_read = _reads_batch_and_head(mask.mask_mod)
    n, m = mask.lengths
    sizes = [graph.call_method("size", (mask.query, 0)) if b_read else 1,
             graph.call_method("size", (mask.query, 1)) if h_read else 1, n, m]
    grids = []
    for axis, size in enumerate(sizes):
        shape = [1, 1, 1, 1]
        shape[axis] = -1
        grids.append(graph.call_method("view", (graph.call_function(torch.arange, (size,)), shape)))
    placeholders = mask.mask_mod.graph.find_nodes(op="placeholder")
    allowed = graph.graph_copy(mask.mask_mod.graph, dict(zip(placeholders, [*grids, *mask.buffers])))
    return graph.call_function(torch.broadcast_to, (graph.call_method("bool", (allowed,)), sizes))


def allowed_mask(mask_mod, query: torch.Tensor, n, m, *buffers) -> torch.Tensor:
    """What the mask_mod allows for this query's batch rows and heads: (B | 1, H | 1, n, m) boolean."""
    return _run(mask_mod, query.shape[0], query.shape[1], int(n), int(m), buffers, cap=None)


def _reads_batch_and_head(mask_mod: fx.GraphModule) -> tuple[bool, bool]:
    """Whether the mask_mod reads its batch row and its head index (its first two arguments)."""
    b, h = list(mask_mod.graph.find_nodes(op="placeholder"))[:2]
    return bool(b.users), bool(h.users)


def _run(mask_mod: fx.GraphModule, batch, heads, n: int, m: int, buffers=(), cap: int | None = MAX_GRID):
    """mask_mod over index grids, (B | 1, H | 1, n, m): only over the batch rows and heads when it reads their
    index (a mask_mod that ignores them allows the same for each); a symbolic count runs a few. Raises past
    ``cap`` entries."""
    b_read, h_read = _reads_batch_and_head(mask_mod)
    batch = (batch if isinstance(batch, int) else 3) if b_read else 1
    heads = (heads if isinstance(heads, int) else 3) if h_read else 1
    if cap is not None and batch * heads * n * m > cap:
        raise ValueError(f"a mask_mod over {batch}x{heads}x{n}x{m} index grids is past {cap} entries")
    b, h = torch.arange(batch)[:, None, None, None], torch.arange(heads)[None, :, None, None]
    with torch.no_grad():
        allowed = mask_mod(b, h, torch.arange(n)[None, None, :, None], torch.arange(m)[None, None, None, :],
                           *buffers)
    return torch.broadcast_to(torch.as_tensor(allowed, dtype=torch.bool), (batch, heads, n, m))


def _read(gm: fx.GraphModule, node: fx.Node, args) -> tuple[bool | FlexMask, str, float | None] | str:
    """(causal, or the FlexMask a probe reads; the name of the node holding the attention's output; the
    softcap), or why the call cannot be read."""
    score_mod = subgraph(gm, args[3])
    softcap = 0.0 if score_mod is not None and _returns_first_input(score_mod) else _softcap(score_mod)
    if softcap is None or len(args) > 7 and args[7]:
        return "attnopt reads no score_mod but tanh softcapping (Gemma 2's) yet"
    softcap = softcap or None  # 0.0: the score as it is
    block_mask = args[4] if len(args) > 4 else None
    mask_mod = subgraph(gm, block_mask[-1]) if isinstance(block_mask, (tuple, list)) and block_mask else None
    if mask_mod is None:
        return "its block mask has no mask_mod attnopt can read"
    if any(isinstance(t, fx.Node) and t.op in ("placeholder", "get_attr") for t in block_mask[:-1]):
        # tables not built here from the mask_mod may skip blocks the mask_mod allows
        return "its block mask comes from outside the graph"
    output = _output_node(node)
    if output is None:
        return "its log-sum-exp is read, which the rewritten op does not give"
    q, k = (_shape(a) for a in args[:2])
    if q is None or k is None:
        return "its query and key have no recorded shapes"
    buffers = tuple(args[8]) if len(args) > 8 and args[8] else ()
    if not all(isinstance(t, fx.Node) for t in buffers):
        return "its mask_mod reads values attnopt cannot follow"
    verdict = None if buffers else _classify(mask_mod, batch=q[0], heads=q[1])
    if isinstance(verdict, str):
        return verdict
    if verdict is None:  # padding, document ids, a window: mask_analysis runs it on probe inputs (FlexMask)
        return FlexMask(mask_mod, tuple(block_mask[:2]), buffers, _constants(mask_mod), q[1], args[0],
                        block_mask[-1].target), output.name, softcap
    if verdict and str(q[2]) != str(k[2]):
        # flex's indices are absolute (causality aligned top-left); attnopt's is aligned to the last key
        return "its causal mask_mod aligns queries and keys of different lengths from the first"
    return verdict, output.name, softcap


def _classify(mask_mod: fx.GraphModule, batch, heads) -> bool | str | None:
    """For a mask_mod of the indices alone: False, every key allowed; True, exactly the causal ones (key ≤
    query); None, something else (a window: mask_analysis reads it); or why it cannot be run."""
    horizon = max(_constants(mask_mod), default=0) + 2
    if horizon > MAX_PROBE_LENGTH:
        return None  # too long to run here; mask_analysis runs it at the lengths its probe reaches
    verdicts = set()
    for n in sorted({*_PROBE_LENGTHS, horizon}):
        try:  # every batch row and head it tells apart
            allowed = _run(mask_mod, batch, heads, n, n)
        except Exception as exc:  # noqa: BLE001 - a mask_mod that does not broadcast stays unread
            return f"its mask_mod does not run over index grids ({type(exc).__name__})"
        if bool(allowed.all()):
            verdicts.add(False)
        elif bool((allowed == torch.ones(n, n, dtype=torch.bool).tril()).all()):
            verdicts.add(True)
        else:
            return None
    return verdicts.pop() if len(verdicts) == 1 else None


def _constants(mask_mod: fx.GraphModule) -> tuple[int, ...]:
    """The integers the mask_mod's ops take (a window's length among them), as magnitudes."""
    return tuple(sorted({abs(a) for n in mask_mod.graph.nodes for a in n.args
                         if isinstance(a, int) and not isinstance(a, bool)}))


def _output_node(node: fx.Node) -> fx.Node | None:
    """The ``getitem(call, 0)`` holding the attention's output, where nothing reads the call's other outputs."""
    outs = [u for u in node.users if u.op == "call_function" and u.target.__name__ == "getitem"]
    if len(outs) != len(node.users) or any(u.args[1] != 0 and u.users for u in outs):
        return None
    first = [u for u in outs if u.args[1] == 0]
    return first[0] if len(first) == 1 else None


def _shape(arg) -> tuple | None:
    val = arg.meta.get("val") if isinstance(arg, fx.Node) else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) and val.dim() == 4 else None


def subgraph(gm: fx.GraphModule, arg):
    """The GraphModule a higher-order op's ``get_attr`` argument names, or None."""
    if isinstance(arg, fx.Node) and arg.op == "get_attr":
        try:
            sub = gm.get_submodule(arg.target)
        except AttributeError:  # a tensor attribute, not a module
            return None
        return sub if isinstance(sub, fx.GraphModule) else None
    return None


def _softcap(score_mod: fx.GraphModule | None) -> float | None:
    """c where the score_mod is c·tanh(s/c) of the score alone (run over scores from −8c to 8c, c one of its
    constants); None where it is not."""
    if score_mod is None:
        return None
    placeholders = list(score_mod.graph.find_nodes(op="placeholder"))
    if not placeholders or any(p.users for p in placeholders[1:]):
        return None  # it reads the positions, the head or the batch row: not a softcap
    caps = sorted({abs(float(a)) for n in score_mod.graph.nodes for a in n.args
                   if isinstance(a, float) and a != 0.0})
    zero = torch.zeros((), dtype=torch.int64)
    for c in caps:
        s = torch.linspace(-8 * c, 8 * c, 2049, dtype=torch.float64)
        try:
            with torch.no_grad():
                out = score_mod(s, zero, zero, zero, zero)
        except Exception:  # noqa: BLE001 - a score_mod that does not run on a vector is not read
            return None
        if not isinstance(out, torch.Tensor) or out.shape != s.shape or not out.is_floating_point():
            return None
        tol = 16 * torch.finfo(out.dtype).eps  # a score_mod that computes in float32 rounds there
        if torch.allclose(out.double(), c * torch.tanh(s / c), rtol=tol, atol=tol * c):
            return c
    return None


def _returns_first_input(sub: fx.GraphModule) -> bool:
    """Whether a score_mod returns the score it is given, unchanged."""
    placeholders = [n for n in sub.graph.nodes if n.op == "placeholder"]
    out = next(n for n in sub.graph.nodes if n.op == "output").args[0]
    out = out[0] if isinstance(out, (tuple, list)) and len(out) == 1 else out
    return bool(placeholders) and out is placeholders[0]
