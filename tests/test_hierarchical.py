"""hierarchical beyond conformance: hand-checked pooling, the level groups, KV-cache steps, cost, zoo rewrites.

The registry's conformance test already holds reference == op == ONNX body on
random inputs; here the reference itself is checked against what VARIANTS.md
says (a block of identical keys carries its members' mass, masked keys leave
the pools, an all-masked block is masked, causal sites pool only earlier
blocks), and the rewrite is checked end to end through both frontends.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx.inliner
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto

import attnopt
from attnopt.errors import InvalidParamsError, NoSitesError
from attnopt.kernels.hierarchical.op import CHUNK_ELEMENTS, coarse_columns
from attnopt.kernels.hierarchical.reference import coarse_groups
from attnopt.kernels.reference import dense_attention
from kernel_harness import MaxNumel, onnx_model, run_onnx, run_op, run_reference

IMPLS = [run_reference, run_op, run_onnx]
SCALE = 0.5
BIG = 1 << 16  # block >= any zoo length: the exact limit


def _params(block, levels=1, sinks=0):
    return {"block": block, "levels": levels, "sinks": sinks}


def _blockwise_identical(n, block, d, heads=1, seed=0):
    """k and v (1, heads, n, d) whose keys (and values) are equal within each block."""
    gen = torch.Generator().manual_seed(seed)
    nb = -(-n // block)
    k = torch.randn(1, heads, nb, d, generator=gen).repeat_interleave(block, dim=2)[:, :, :n]
    v = torch.randn(1, heads, nb, d, generator=gen).repeat_interleave(block, dim=2)[:, :, :n]
    return k, v


# --- the pooling, checked by hand -------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_a_block_of_identical_keys_carries_the_mass_of_its_members(impl, causal):
    """Pooling a block of equal keys loses nothing (score + log n), so the result is dense attention:
    also with one key of a block padded (n = 1) and with a whole block padded (masked)."""
    n, block, d = 14, 2, 4
    q = torch.randn(1, 2, n, d, generator=torch.Generator().manual_seed(1))
    k, v = _blockwise_identical(n, block, d)
    padding = torch.zeros(1, n)
    padding[0, 9] = float("-inf")  # half of block 4
    padding[0, 2:4] = torch.finfo(torch.float32).min  # all of block 1
    for kp in (None, padding):
        got = impl("hierarchical", q, k, v, _params(block), scale=SCALE, key_padding=kp, causal=causal)
        torch.testing.assert_close(got, dense_attention(q, k, v, scale=SCALE, key_padding=kp, causal=causal),
                                   atol=2e-6, rtol=1e-5)
    # The same check fails once the blocks differ: the test can tell pooling from dense.
    k2 = k.clone()
    k2[:, :, 0::2] += 1.0
    assert not torch.allclose(impl("hierarchical", q, k2, v, _params(block), scale=SCALE, causal=causal),
                              dense_attention(q, k2, v, scale=SCALE, causal=causal), atol=1e-4)


@pytest.mark.parametrize("impl", IMPLS, ids=lambda f: f.__name__)
def test_levels_pool_groups_of_identical_blocks_without_loss(impl):
    """levels=3 pools 2 and 4 blocks at a time: equal keys over each group keep dense attention's mass.

    For query block 0 (B = 2: keys 0..3 exact), single blocks sit at block distances 2..3 (keys 4..7),
    pairs at 4..7 (keys 8..15) and groups of four from 8 on (keys 16..47); keys equal over each of those
    groups make every pooled entry exact.
    """
    n, d = 48, 4
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(1, 1, n, d, generator=gen)
    k, v = torch.randn(1, 1, n, d, generator=gen), torch.randn(1, 1, n, d, generator=gen)
    for lo, hi in ((4, 6), (6, 8), (8, 12), (12, 16), (16, 24), (24, 32), (32, 40), (40, 48)):
        k[:, :, lo:hi], v[:, :, lo:hi] = k[:, :, lo:lo + 1], v[:, :, lo:lo + 1]
    got = impl("hierarchical", q, k, v, _params(2, levels=3), scale=SCALE)[:, :, :2]
    torch.testing.assert_close(got, dense_attention(q, k, v, scale=SCALE)[:, :, :2], atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS, ids=lambda f: f.__name__)
def test_a_pooled_entry_is_the_mean_key_and_value_of_its_unmasked_keys(impl):
    """Hand-computed: queries in block 0 of 3 (B = 2) see keys 0..3 exactly and block 2 as one entry."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 1, 6, 3, generator=gen) for _ in range(3))

    def expected(kp):
        keep = torch.isfinite(kp[0, 4:])
        k_bar, v_bar = k[0, 0, 4:][keep].mean(0), v[0, 0, 4:][keep].mean(0)
        scores = torch.cat([SCALE * q[0, 0, :2] @ k[0, 0, :4].T,
                            SCALE * q[0, 0, :2] @ k_bar[:, None] + math.log(int(keep.sum()))], dim=1)
        probs = torch.softmax(scores, dim=1)
        return probs[:, :4] @ v[0, 0, :4] + probs[:, 4:] * v_bar

    for kp in (torch.zeros(1, 6), torch.tensor([[0, 0, 0, 0, 0, float("-inf")]])):
        got = impl("hierarchical", q, k, v, _params(2), scale=SCALE, key_padding=kp)[0, 0, :2]
        torch.testing.assert_close(got, expected(kp), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS, ids=lambda f: f.__name__)
def test_an_all_masked_block_is_masked(impl):
    """A fully padded block takes no mass: whatever its keys and values hold, the output is the same."""
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 2, 12, 4, generator=gen) for _ in range(3))
    kp = torch.zeros(1, 12)
    kp[0, 8:10] = float("-inf")  # block 4 of 6 (B = 2)
    outs = []
    for garbage in (0.0, 1e4):
        k2, v2 = k.clone(), v.clone()
        k2[:, :, 8:10], v2[:, :, 8:10] = garbage, -garbage
        outs.append(impl("hierarchical", q, k2, v2, _params(2), scale=SCALE, key_padding=kp))
    assert torch.isfinite(outs[0]).all()
    torch.testing.assert_close(outs[0], outs[1], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("impl", IMPLS, ids=lambda f: f.__name__)
def test_causal_queries_never_pool_their_own_or_later_blocks(impl):
    """Changing any key or value after a query (in its block or beyond) leaves its output alone."""
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 1, 16, 4, generator=gen) for _ in range(3))
    params = _params(2, levels=2, sinks=1)
    base = impl("hierarchical", q, k, v, params, scale=SCALE, causal=True)
    for p in (4, 9, 13):
        k2, v2 = k.clone(), v.clone()
        k2[:, :, p + 1:] += 3.0
        v2[:, :, p + 1:] -= 3.0
        got = impl("hierarchical", q, k2, v2, params, scale=SCALE, causal=True)
        torch.testing.assert_close(got[:, :, :p + 1], base[:, :, :p + 1], atol=1e-6, rtol=1e-6)
        assert not torch.allclose(got[:, :, p + 1:], base[:, :, p + 1:])


# --- the level groups ----------------------------------------------------------------------------


def _partition(groups_row: torch.Tensor) -> list[list[int]]:
    """The keys pooled together for one query, as sorted lists, ordered by their first key."""
    parts: dict[int, list[int]] = {}
    for j, g in enumerate(groups_row.tolist()):
        if g >= 0:
            parts.setdefault(g, []).append(j)
    return sorted(parts.values())


def test_coarse_groups_follow_the_levels():
    """Blocks of one key (B = 1), so groups are key sets; written out by hand."""
    singles = lambda *js: [[j] for j in js]  # noqa: E731
    g = coarse_groups(20, 20, 1, 1, causal=False)
    assert _partition(g[10]) == singles(*range(0, 9), *range(12, 20))
    g = coarse_groups(20, 20, 1, 2, causal=False)
    assert _partition(g[0]) == singles(2, 3) + [[4, 5], [6, 7], [8, 9], [10, 11], [12, 13], [14, 15], [16, 17],
                                                [18, 19]]
    assert _partition(g[10]) == [[0], [1, 2], [3, 4], [5, 6], [7], [8], [12], [13], [14, 15], [16, 17], [18, 19]]
    g = coarse_groups(20, 20, 1, 3, causal=False)
    assert _partition(g[0]) == singles(2, 3) + [[4, 5], [6, 7], [8, 9, 10, 11], [12, 13, 14, 15], [16, 17, 18, 19]]
    g = coarse_groups(20, 20, 1, 2, causal=True)
    assert _partition(g[10]) == [[0], [1, 2], [3, 4], [5, 6], [7], [8]]
    assert _partition(g[1]) == []


@pytest.mark.parametrize("levels", [1, 2, 3, 4])
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_the_ops_columns_are_the_reference_groups(levels, causal):
    """op.coarse_columns (block ranges per query block) partitions the keys exactly as coarse_groups does."""
    n, block = 45, 2
    key_blocks = -(-n // block)
    groups = coarse_groups(n, n, block, levels, causal)
    qb = torch.arange(key_blocks)
    start, end = coarse_columns(qb, key_blocks, levels, causal)
    for b in range(key_blocks):
        ranges = [(max(s, 0), min(e, key_blocks)) for s, e in zip(start[b].tolist(), end[b].tolist())]
        from_columns = sorted([j for j in range(s * block, min(e * block, n))] for s, e in ranges if s < e)
        assert from_columns == _partition(groups[b * block]), (b, ranges)


# --- KV-cache steps ------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS, ids=lambda f: f.__name__)
def test_a_kv_cache_step_equals_the_last_rows_of_the_whole_sequence(impl):
    """Queries i + (M − N) of a decode step see what the same positions see in the full causal run."""
    gen = torch.Generator().manual_seed(6)
    q, k, v = torch.randn(2, 4, 23, 8, generator=gen), torch.randn(2, 2, 23, 8, generator=gen), \
        torch.randn(2, 2, 23, 8, generator=gen)
    kp = torch.zeros(2, 23)
    kp[1, 3:6] = float("-inf")
    params = _params(3, levels=2, sinks=2)
    full = impl("hierarchical", q, k, v, params, scale=SCALE, key_padding=kp, causal=True)
    for new in (1, 4):
        step = impl("hierarchical", q[:, :, -new:], k, v, params, scale=SCALE, key_padding=kp, causal=True)
        torch.testing.assert_close(step, full[:, :, -new:], atol=2e-6, rtol=1e-5)


def test_onnx_body_runs_in_float16():
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, 2, 21, 8, generator=gen) for _ in range(3))
    params = _params(4, levels=2, sinks=1)
    model = onnx_model("hierarchical", params, scale=SCALE, causal=True, elem_type=TensorProto.FLOAT16)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"Q": q.half().numpy(), "K": k.half().numpy(), "V": v.half().numpy(),
                           "Mask": np.zeros((1, 1, 1, 1), np.float32), "KeyPadding": np.zeros((1, 1), np.float32),
                           "SinkLogits": np.zeros(0, np.float32)})
    assert y.dtype == np.float16
    expected = run_reference("hierarchical", q.half(), k.half(), v.half(), params, scale=SCALE, causal=True)
    torch.testing.assert_close(torch.from_numpy(y).float(), expected.float(), atol=2e-3, rtol=2e-3)


# --- cost -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_pooled_columns_per_query_block(levels):
    """L = 1: at most N/B columns; each further level halves the far groups: 4(L−1) + N/(B·2^(L−1)) + 1."""
    key_blocks = 256
    start, _ = coarse_columns(torch.arange(key_blocks), key_blocks, levels, causal=False)
    assert start.shape[1] <= 4 * (levels - 1) + key_blocks // 2 ** (levels - 1) + 1


@pytest.mark.parametrize("n", [1024, 4096])
def test_cpu_op_holds_one_chunk_of_scores_at_most(n):
    """Nothing bigger than the inputs (N·D per head) or one chunk of scores, whatever N is."""
    gen = torch.Generator().manual_seed(8)
    h, d = 2, 16
    q, k, v = (torch.randn(1, h, n, d, generator=gen) for _ in range(3))
    with MaxNumel() as seen:
        run_op("hierarchical", q, k, v, _params(64, sinks=2), scale=SCALE, key_padding=torch.zeros(1, n))
    assert seen.max_numel <= max(n * d * h, CHUNK_ELEMENTS)


def _largest_onnx_intermediate(model, feeds) -> int:
    """The largest value any node of the inlined model produces (every value exposed as an output)."""
    model = onnx.shape_inference.infer_shapes(onnx.inliner.inline_local_functions(model))
    types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.value_info}
    produced = [out for node in model.graph.node for out in node.output if out in types]
    model.graph.output.extend(onnx.helper.make_tensor_value_info(name, types[name], None) for name in produced)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return max(a.size for a in sess.run(None, feeds))


@pytest.mark.parametrize("levels", [1, 3])
def test_onnx_body_cost_is_n_times_fine_plus_pooled_columns(levels):
    """Every intermediate is at most H·N·(3B + G + C) elements (C: pooled columns), far below N²."""
    n, block, sinks, d = 512, 16, 2, 8
    dims = {"Q": [1, 2, "N", d], "K": [1, 1, "N", d], "V": [1, 1, "N", d], "Mask": [1, 1, 1, 1],
            "KeyPadding": [1, "N"]}
    model = onnx_model("hierarchical", _params(block, levels, sinks), scale=SCALE, causal=False, dims=dims)
    gen = torch.Generator().manual_seed(9)
    feeds = {"Q": torch.randn(1, 2, n, d, generator=gen).numpy(), "K": torch.randn(1, 1, n, d, generator=gen).numpy(),
             "V": torch.randn(1, 1, n, d, generator=gen).numpy(), "Mask": np.zeros((1, 1, 1, 1), np.float32),
             "KeyPadding": np.zeros((1, n), np.float32), "SinkLogits": np.zeros(0, np.float32)}
    columns = coarse_columns(torch.arange(n // block), n // block, levels, causal=False)[0].shape[1]
    assert _largest_onnx_intermediate(model, feeds) <= 2 * n * (3 * block + sinks + columns) < n * n


# --- the pass, through both frontends -------------------------------------------------------------------------

ZOO_FAMILIES = {"bert-eager", "gpt2-eager", "llama-gqa-sdpa", "bart-eager"}  # padding, causal, GQA, cross
_ONNX = dict(select=lambda case, how: case.name in ZOO_FAMILIES and how in ("dynamo", "torchscript"))
_FX = dict(select=lambda case, how: case.name in ZOO_FAMILIES and how == "export")


def _check_report(result, case):
    """Self-attention sites rewritten; cross-attention sites refused, saying why."""
    refused = [o for o in result.report if o.status == "refused"]
    assert len(refused) == case.expected_sites - case.self_attention_sites, result.to_dict()
    assert len(result.report) - len(refused) == case.self_attention_sites
    for o in refused:
        assert o.reason.startswith("cross-attention (N=") and o.reason.endswith("hierarchical needs self-attention")


def _onnx_inputs(case, path):
    built = case.factory()
    names = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
    return {name: t.numpy() for name, t in zip(names, built.inputs)}


@pytest.mark.zoo(**_ONNX)
def test_onnx_zoo_rewrite_is_exact_at_the_limit(zoo_onnx_case, tmp_path):
    case = zoo_onnx_case.case
    result = attnopt.rewrite(zoo_onnx_case.path, "hierarchical", block=BIG, sinks=2)
    _check_report(result, case)
    out = tmp_path / "hierarchical.onnx"
    result.save(out)
    onnx.checker.check_model(str(out), full_check=True)
    report = attnopt.validate(zoo_onnx_case.path, out, inputs=_onnx_inputs(case, zoo_onnx_case.path))
    assert [m for m in report.sites if m.comparable], "no site could be compared"
    assert report.is_exact(1e-5), report.to_dict()


@pytest.mark.zoo(**_FX)
def test_fx_zoo_rewrite_is_exact_at_the_limit(zoo_fx_case):
    case = zoo_fx_case.case
    result = attnopt.rewrite(zoo_fx_case.graph, "hierarchical", block=BIG, sinks=2,
                             example_inputs=zoo_fx_case.example_inputs)
    _check_report(result, case)
    report = attnopt.validate(zoo_fx_case.graph, result.model, example_inputs=zoo_fx_case.inputs)
    assert report.is_exact(1e-5), report.to_dict()


def test_onnx_and_fx_rewrites_agree_below_the_limit(zoo, tmp_path):
    """Both frontends lower the same plan: at a restricting setting the rewritten models still agree."""
    name = "llama-gqa-sdpa"
    params = _params(2, levels=2, sinks=1)
    path = zoo.onnx_path(name, "dynamo")
    onnx_result = attnopt.rewrite(path, "hierarchical", **params)
    onnx_result.save(tmp_path / "h.onnx")
    inputs = _onnx_inputs(_case(name), path)
    (got_onnx, *_) = ort.InferenceSession(str(tmp_path / "h.onnx"),
                                          providers=["CPUExecutionProvider"]).run(None, inputs)
    graph, example_inputs = zoo.fx_graph(name, "export")
    fx_result = attnopt.rewrite(graph, "hierarchical", example_inputs=example_inputs, **params)
    with torch.no_grad():
        got_fx = _first_tensor(fx_result.model(*zoo.build(name).inputs))
    original = attnopt.validate(path, tmp_path / "h.onnx", inputs=inputs)
    assert not original.is_exact(1e-5), "the setting should restrict attention"
    np.testing.assert_allclose(got_onnx, got_fx.numpy(), atol=1e-5, rtol=1e-4)


def _case(name):
    import zoo as zoo_lib
    return zoo_lib.CASES_BY_NAME[name]


def _first_tensor(out):
    while not isinstance(out, torch.Tensor):
        out = out[0] if isinstance(out, (tuple, list)) else next(iter(out.values()))
    return out


def test_a_dense_remainder_mask_is_refused_with_the_reason(zoo):
    """T5's position bias reaches the site as a dense mask, which pooled entries cannot carry."""
    with pytest.raises(NoSitesError, match="dense mask .* hierarchical pools far keys"):
        attnopt.rewrite(zoo.onnx_path("t5-encoder-eager", "dynamo"), "hierarchical", block=4)


@pytest.mark.parametrize("given, message", [({"block": 0}, "block must be >= 1, got 0"),
                                            ({"levels": 0}, "levels must be >= 1, got 0"),
                                            ({"sinks": -1}, "sinks must be >= 0"),
                                            ({"window": 3}, "has no parameter 'window'")])
def test_bad_parameters_are_refused_in_one_line(given, message):
    from attnopt.passes.registry import make_pass
    with pytest.raises(InvalidParamsError, match=message):
        make_pass("hierarchical", **given)
