"""lsh, routed and lowrank beyond the registry's conformance test.

Exact limits (n_buckets = 1, n_clusters = 1, rank >= M, and nystrom's with
enough pinv steps), inputs that could empty a softmax row, the sorted-bucket
machinery at sizes with many blocks per bucket, lowrank's servable cases
(conformance feeds it causal sites and per-query masks, which it refuses),
refusals, determinism of the stored rotations, and rewrites of zoo models
through both frontends.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.inliner
import onnxruntime as ort
import pytest
import torch

import attnopt
from attnopt.errors import InvalidParamsError, NoSitesError
from attnopt.kernels.buckets import bucket_attention, buckets_allowed
from attnopt.kernels.reference import dense_attention, restricted_attention, with_sinks
from attnopt.kernels.registry import get_variant
from attnopt.passes import make_pass
from kernel_harness import MaxNumel, onnx_model, ops_onnxruntime_runs, run_onnx, run_op, run_reference

TOL = dict(atol=2e-5, rtol=1e-5)
SCALE = 0.3
IMPLS = (run_reference, run_op, run_onnx)


def qkv(b, h, hkv, n, m, d, seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, n, d, generator=gen), torch.randn(b, hkv, m, d, generator=gen),
            torch.randn(b, hkv, m, d, generator=gen))


def padding(b, m):
    """Trailing padding in batch 0, HF's finfo.min on one key of the last batch; never a whole row."""
    kp = torch.zeros(b, m)
    kp[0, max(1, m - 4):] = float("-inf")
    kp[-1, m // 3] = torch.finfo(torch.float32).min
    return kp


# --- exact limits ---------------------------------------------------------------------------

LIMITS = [
    ("lsh", lambda n, m: {"n_buckets": 1, "n_rounds": 2, "chunk": 3, "seed": 5, "sinks": 2}),
    ("routed", lambda n, m: {"n_clusters": 1, "top_k": 3, "iters": 1, "seed": 0, "chunk": 3, "sinks": 1}),
    ("lowrank", lambda n, m: {"rank": m, "method": "pool", "pinv_steps": 6}),
    ("lowrank", lambda n, m: {"rank": m + 5, "method": "pool", "pinv_steps": 6}),
]


@pytest.mark.parametrize("name, limit", LIMITS, ids=["lsh-b1", "routed-c1", "pool-r=M", "pool-r>M"])
@pytest.mark.parametrize("shape", [(2, 4, 2, 11, 11, 8), (1, 2, 1, 5, 5, 4)], ids=["gqa", "mqa"])
def test_exact_limit_is_dense(name, limit, shape):
    spec = get_variant(name)
    q, k, v = qkv(*shape, 0)
    params = limit(shape[3], shape[4])
    dense_mask = torch.randn(1, shape[1], shape[3], shape[4])
    for causal in (False, True) if spec.name != "lowrank" else (False,):
        for mask, kp in ((None, None), (None, padding(shape[0], shape[4])),
                         (dense_mask if spec.name != "lowrank" else None, padding(shape[0], shape[4]))):
            kw = dict(scale=SCALE, mask=mask, key_padding=kp, causal=causal)
            expected = dense_attention(q, k, v, **kw)
            for impl in IMPLS:
                torch.testing.assert_close(impl(name, q, k, v, params, **kw), expected, **TOL,
                                           msg=lambda e: f"{impl.__name__} causal={causal}: {e}")


@pytest.mark.parametrize("shape", [(2, 4, 2, 9, 9, 8), (1, 2, 1, 3, 10, 4)], ids=["self", "cross"])
def test_nystrom_is_dense_at_full_rank_to_the_accuracy_of_the_pinv(shape):
    """rank >= max(N, M): all three factors are one matrix A and A·pinv(A)·A = A; 6 steps are too few."""
    q, k, v = qkv(*shape, 1)
    kp = padding(shape[0], shape[4])
    expected = dense_attention(q, k, v, scale=SCALE, key_padding=kp)
    full = {"rank": max(shape[3], shape[4]), "method": "nystrom"}
    for impl in IMPLS:
        torch.testing.assert_close(impl("lowrank", q, k, v, {**full, "pinv_steps": 24}, scale=SCALE, key_padding=kp),
                                   expected, atol=2e-4, rtol=1e-4)
    few = run_op("lowrank", q, k, v, {**full, "pinv_steps": 2}, scale=SCALE, key_padding=kp)
    assert (few - expected).abs().max() > 1e-3  # the iteration count is what the accuracy rests on


# --- lowrank on what it serves (the conformance test also feeds it what it refuses) ----------

@pytest.mark.parametrize("params", get_variant("lowrank").test_params, ids=lambda p: f"{p['method']}-{p['rank']}")
def test_lowrank_op_and_onnx_body_equal_the_reference(params):
    checked = 0
    for seed, shape in enumerate([(2, 4, 2, 13, 13, 8), (1, 2, 2, 7, 7, 4), (2, 4, 1, 1, 1, 8),
                                  (2, 4, 2, 3, 11, 8), (1, 2, 1, 1, 9, 4)]):
        q, k, v = qkv(*shape, seed)
        # A mask that is the same for every query and head is key padding by another name.
        per_key = torch.randn(shape[0], 1, 1, shape[4])
        for mask, kp in ((None, None), (None, padding(shape[0], shape[4])), (per_key, padding(shape[0], shape[4]))):
            for softcap in (0.0, 2.5):
                kw = dict(scale=SCALE, mask=mask, key_padding=kp, softcap=softcap)
                expected = run_reference("lowrank", q, k, v, params, **kw)
                assert torch.isfinite(expected).all()
                torch.testing.assert_close(run_op("lowrank", q, k, v, params, **kw), expected, **TOL)
                torch.testing.assert_close(run_onnx("lowrank", q, k, v, params, **kw), expected, **TOL)
                checked += 1
    assert checked == 30


def test_lowrank_pool_gives_a_group_of_identical_keys_the_mass_of_its_members():
    """log n_g: with each group's keys identical, pooling changes nothing."""
    q, k, v = qkv(1, 2, 2, 12, 12, 4, 2)
    k, v = k[:, :, ::3].repeat_interleave(3, dim=2), v[:, :, ::3].repeat_interleave(3, dim=2)
    params = {"rank": 4, "method": "pool", "pinv_steps": 6}
    torch.testing.assert_close(run_op("lowrank", q, k, v, params, scale=SCALE),
                               dense_attention(q, k, v, scale=SCALE), **TOL)


# --- no empty softmax row, whatever the input -------------------------------------------------

HARD = [("lsh", get_variant("lsh").test_params[1]), ("lsh", get_variant("lsh").test_params[2]),
        ("routed", get_variant("routed").test_params[1]), ("routed", get_variant("routed").test_params[2]),
        ("lowrank", get_variant("lowrank").test_params[0]), ("lowrank", get_variant("lowrank").test_params[1])]


@pytest.mark.parametrize("name, params", HARD, ids=[f"{n}-{i}" for i, (n, _) in enumerate(HARD)])
def test_identical_tokens_and_heavy_padding_give_no_nan(name, params):
    b, h, hkv, n, d = 2, 4, 2, 24, 8
    q, k, v = qkv(b, h, hkv, n, n, d, 3)
    same = torch.randn(d)
    cases = {"identical tokens": (same.expand(b, h, n, d).clone(), same.expand(b, hkv, n, d).clone(), v, None),
             "zero vectors": (torch.zeros(b, h, n, d), torch.zeros(b, hkv, n, d), v, None)}
    most = torch.full((b, n), float("-inf"))
    most[0, 5] = 0.0  # batch 0 keeps one key; batch 1 keeps none (its rows have no allowed key: 0)
    cases["padding covers most keys"] = (q, k, v, most)
    hf = torch.full((b, n), torch.finfo(torch.float32).min)
    hf[:, :2] = 0.0
    cases["HF padding covers most keys"] = (q, k, v, hf)
    for what, (q_, k_, v_, kp) in cases.items():
        expected = run_reference(name, q_, k_, v_, params, scale=SCALE, key_padding=kp)
        for impl in (run_op, run_onnx):
            got = impl(name, q_, k_, v_, params, scale=SCALE, key_padding=kp)
            assert torch.isfinite(got).all(), f"{impl.__name__}, {what}"
            torch.testing.assert_close(got, expected, **TOL, msg=lambda e: f"{impl.__name__}, {what}: {e}")
        if what == "padding covers most keys":
            assert (expected[1] == 0).all() and expected[0].abs().sum() > 0


def test_bucket_part_far_scores_survive_rows_the_part_leaves_empty():
    """The CPU op's fused bucket part (``buckets._fused_part``) gives a row with no allowed key no weight:
    its log-sum-exp is −inf, not the kernel's 0, so scores far below 0 in the other parts still merge."""
    from attnopt.kernels.buckets import _fused_part, merge_parts

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 8, generator=g) for _ in range(3))
    k = -40 * q.sum(0, keepdim=True).expand(2, 4, 8) / 8  # every score near −200: exp underflows against 0
    allowed = torch.ones(2, 4, 4, dtype=torch.bool)
    allowed[0] = False  # the first block's rows see no key in this part
    top, total, out = _fused_part(q, k, v, allowed, 1.0)
    assert torch.isneginf(top[0]).all() and (total[0] == 0).all() and (out[0] == 0).all()
    # merged with a part that holds the same rows' real scores, the result is that part's own softmax
    s = (q @ k.transpose(-1, -2))
    other = (s.amax(-1), torch.exp(s - s.amax(-1, keepdim=True)).sum(-1),
             torch.exp(s - s.amax(-1, keepdim=True)) @ v)
    parts = [tuple(t[None, None, None] for t in part) for part in ((top, total, out), other)]  # (1, 1, 1, ...)
    merged = merge_parts(parts)
    torch.testing.assert_close(merged[0, 0, 0], torch.softmax(s[0], -1) @ v[0])


def test_take_rows_reads_each_batch_and_head_at_its_own_indices():
    """The whole-row copy the bucket part reads q, k and v with equals gather's, on a strided (transposed) input."""
    from attnopt.kernels.buckets import take_rows

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, 3, 5, generator=g).transpose(1, 2)  # (B, Hkv, L, D), not contiguous
    idx = torch.randint(0, 9, (2, 3, 14), generator=g)
    want = x.gather(2, idx[..., None].expand(-1, -1, -1, 5))
    assert torch.equal(take_rows(x, idx), want)


def test_every_query_sees_at_least_its_own_chunk():
    """The local chunk: with one key per bucket and no key in the query's buckets, rows are still nonempty."""
    q, k, v = qkv(1, 1, 1, 16, 16, 4, 4)
    q_buckets = torch.zeros(1, 1, 1, 16, dtype=torch.long)
    k_buckets = torch.ones(1, 1, 1, 16, dtype=torch.long)  # no key shares a query's bucket
    allowed = buckets_allowed(q_buckets, k_buckets, chunk=4)
    assert allowed.any(-1).all() and allowed.sum() == 16 * 4
    got = bucket_attention(q, k, v, None, None, q_buckets, k_buckets, n_buckets=2, chunk=4, sinks=0, scale=SCALE,
                           causal=True)
    expected = restricted_attention(q, k, v, allowed, scale=SCALE, causal=True)
    torch.testing.assert_close(got, expected, **TOL)
    # The ONNX body then has no (query block, key block) pair at all: its gathers still have a row to read.
    got = _onnx_bucket_attention(q, k, v, torch.zeros(1, 1, 1, 1), torch.zeros(1, 1), q_buckets, k_buckets,
                                 [2, 4, 0, 1], [SCALE, 0.0, True])
    torch.testing.assert_close(got, expected, **TOL)


# --- the sorted-bucket machinery at sizes with many blocks ------------------------------------

@pytest.mark.parametrize("n_buckets, rounds", [(1, 1), (3, 2), (16, 3), (100, 2)])
def test_bucket_machinery_matches_its_spec_at_larger_sizes(n_buckets, rounds):
    """Several blocks per bucket, skewed buckets, GQA, a KV-cache offset (M > N), causal, sinks, masks."""
    b, h, hkv, n, m, d = 2, 4, 2, 150, 170, 8
    q, k, v = qkv(b, h, hkv, n, m, d, 5)
    gen = torch.Generator().manual_seed(6)
    # Skewed buckets: bucket c drawn with weight 2^-c.
    weights = 0.5 ** torch.arange(n_buckets, dtype=torch.float)
    q_buckets = torch.multinomial(weights, b * h * rounds * n, replacement=True, generator=gen).view(b, h, rounds, n)
    k_buckets = torch.multinomial(weights, b * hkv * rounds * m, replacement=True, generator=gen).view(b, hkv, rounds,
                                                                                                      m)
    mask = torch.randn(b, 1, n, m, generator=gen)
    kp = padding(b, m)
    # GPT-OSS's learned sinks on the causal pass: one more term where the parts merge, −inf (none) among them
    for causal, sink_logits in ((False, None), (True, torch.tensor([0.5, 3.0, float("-inf"), -2.0]))):
        allowed = with_sinks(buckets_allowed(q_buckets, k_buckets, chunk=7), 3)
        expected = restricted_attention(q, k, v, allowed, scale=SCALE, mask=mask, key_padding=kp, causal=causal,
                                        softcap=2.0, sink_logits=sink_logits)
        got = bucket_attention(q, k, v, mask, kp, q_buckets, k_buckets, n_buckets=n_buckets, chunk=7, sinks=3,
                               scale=SCALE, causal=causal, softcap=2.0, block=16, sink_logits=sink_logits)
        torch.testing.assert_close(got, expected, **TOL)
        # The ONNX form (blocks of 16 rows and 16 keys at D = 8): bucket 0 holds about half of them all,
        # so it spans several (query block, key block) pairs whose softmax pieces the body merges.
        got = _onnx_bucket_attention(q, k, v, mask, kp, q_buckets, k_buckets, [n_buckets, 7, 3, rounds],
                                     [SCALE, 2.0, causal], sink_logits)
        torch.testing.assert_close(got, expected, **TOL)


def _onnx_bucket_attention(q, k, v, mask, kp, q_buckets, k_buckets, config, scalars, sink_logits=None):
    """ai.attnopt::BucketAttention alone in onnxruntime (CPU); no sink logits is the empty vector."""
    from onnx import TensorProto, helper

    from attnopt.kernels.onnx_functions import attach_functions
    from attnopt.onnx_compat import DOMAIN, DOMAIN_VERSION

    names = ["Q", "K", "V", "Mask", "KeyPadding", "SinkLogits", "QBuckets", "KBuckets", "Config", "Scalars"]
    sinks = np.zeros(0, np.float32) if sink_logits is None else sink_logits.numpy()
    feeds = dict(zip(names, [q.numpy(), k.numpy(), v.numpy(), mask.numpy(), kp.numpy(), sinks, q_buckets.numpy(),
                             k_buckets.numpy(), np.array(config, np.int64), np.array(scalars, np.float32)]))
    types = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64}
    graph = helper.make_graph([helper.make_node("BucketAttention", names, ["Y"], domain=DOMAIN)], "buckets",
                              [helper.make_tensor_value_info(n, types[a.dtype], a.shape) for n, a in feeds.items()],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN,
                                                                                                     DOMAIN_VERSION)],
                              ir_version=10)
    attach_functions(model, ["LshAttention"])  # BucketAttention is what lsh's body calls, with its own callees
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, feeds)[0])


@pytest.mark.parametrize("name", ["lsh", "routed"])
@pytest.mark.parametrize("causal", [False, True])
def test_bucket_bodies_fold_every_if_at_load(name, causal, tmp_path):
    """Every If in the bucket bodies tests a constant (the round count in Config, the cap, causality, the
    mask's and sink logits' sizes), so onnxruntime folds them at load: an If left at run time copies its branch's
    output, which here is the whole score tensor. "No mask" and the sink logits, given or not, are initializers,
    as the rewrites write them."""
    for params in get_variant(name).test_params:
        for sinks in (np.zeros(0, np.float32), np.array([0.5, 3.0, -np.inf, -2.0], np.float32)):
            model = onnx_model(name, params, scale=SCALE, causal=causal, q_shape=(2, 4, 40, 8),
                               k_shape=(2, 2, 40, 8))
            for const, value in (("Mask", np.zeros((1, 1, 1, 1), np.float32)), ("SinkLogits", sinks)):
                model.graph.input.remove(next(i for i in model.graph.input if i.name == const))
                model.graph.initializer.append(onnx.numpy_helper.from_array(value, const))
            assert "If" not in ops_onnxruntime_runs(model, tmp_path / "optimized.onnx"), (params, sinks)


def test_lowrank_cpu_op_builds_nothing_quadratic():
    """The conformance version runs causal, which lowrank refuses; the same check without it."""
    n = 2048
    q, k, v = qkv(1, 1, 1, n, n, 16, 0)
    for params in get_variant("lowrank").test_params:
        with MaxNumel() as seen:
            run_op("lowrank", q, k, v, params, scale=SCALE, key_padding=torch.zeros(1, n))
        assert seen.max_numel < n * n // 16, params


def test_routing_upcasts_keys_and_queries_a_chunk_at_a_time(monkeypatch):
    """k-means and routing hold fp32 copies of at most UPCAST rows (issue 9 item 4), with the same result as
    in one piece: chunks of 7 rows (ragged at the end) against one chunk, bf16 keys, key padding, GQA."""
    from attnopt.kernels.routed import clusters

    gen = torch.Generator().manual_seed(11)
    q = torch.randn(2, 4, 40, 16, generator=gen).bfloat16()
    k = torch.randn(2, 2, 40, 16, generator=gen).bfloat16()
    kp = torch.zeros(2, 40)
    kp[1, 30:] = float("-inf")
    whole = clusters.route(q, k, kp, n_clusters=5, top_k=2, iters=3)
    monkeypatch.setattr(clusters, "UPCAST", 7)
    upcast = []
    monkeypatch.setattr(clusters, "unit", lambda rows: upcast.append(rows.shape[2]) or
                        torch.nn.functional.normalize(rows.float(), dim=-1, eps=clusters.EPS))
    chunked = clusters.route(q, k, kp, n_clusters=5, top_k=2, iters=3)
    assert torch.equal(chunked[0], whole[0]) and torch.equal(chunked[1], whole[1])
    assert upcast and max(upcast) == 7


@pytest.mark.parametrize("name", ["lsh", "lowrank"])
def test_onnx_body_builds_nothing_quadratic(name):
    """As the conformance test, with lsh's rotations drawn for the real head dim and lowrank not causal."""
    spec = get_variant(name)
    n, d = 192, 8
    causal = name != "lowrank"
    dims = {"Q": [1, 2, "N", d], "K": [1, 1, "N", d], "V": [1, 1, "N", d], "Mask": [1, 1, 1, 1], "KeyPadding": [1, "N"]}
    params = spec.test_params[-1]
    model = onnx_model(name, params, scale=SCALE, causal=causal, dims=dims, q_shape=(1, 2, n, d), k_shape=(1, 1, n, d))
    model = onnx.shape_inference.infer_shapes(onnx.inliner.inline_local_functions(model))
    types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.value_info}
    produced = [out for node in model.graph.node for out in node.output if out in types]
    assert len(produced) > 20
    model.graph.output.extend(onnx.helper.make_tensor_value_info(x, types[x], None) for x in produced)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    q, k, v = qkv(1, 2, 1, n, n, d, 0)
    kp = torch.zeros(1, n)
    kp[0, -5:] = float("-inf")
    feeds = {"Q": q.numpy(), "K": k.numpy(), "V": v.numpy(), "Mask": np.zeros((1, 1, 1, 1), np.float32),
             "KeyPadding": kp.numpy()}
    if spec.serves_sink_logits:  # none: the empty vector
        feeds["SinkLogits"] = np.zeros(0, np.float32)
    results = sess.run(None, feeds)
    assert not {o.name: a.size for o, a in zip(model.graph.output, results) if a.size >= n * n}
    torch.testing.assert_close(torch.from_numpy(results[0]),
                               run_reference(name, q, k, v, params, scale=SCALE, key_padding=kp, causal=causal), **TOL)


# --- refusals and parameter errors -----------------------------------------------------------

def test_parameters_are_checked_with_one_line_errors():
    with pytest.raises(InvalidParamsError, match="n_buckets must be 1 or even"):
        make_pass("lsh", n_buckets=3)
    with pytest.raises(InvalidParamsError, match="method must be one of pool, nystrom"):
        make_pass("lowrank", method="svd")
    with pytest.raises(InvalidParamsError, match="n_clusters must be >= 1"):
        make_pass("routed", n_clusters=0)


def test_lowrank_kernels_refuse_what_they_cannot_pool():
    q, k, v = qkv(1, 2, 2, 6, 6, 4, 0)
    params = {"rank": 2, "method": "pool", "pinv_steps": 6}
    for impl in (run_reference, run_op):
        with pytest.raises(ValueError, match="cannot be causal"):
            impl("lowrank", q, k, v, params, scale=SCALE, causal=True)
        with pytest.raises(ValueError, match="varies per query"):
            impl("lowrank", q, k, v, params, scale=SCALE, mask=torch.randn(1, 1, 6, 6))
    with pytest.raises(Exception):  # the ONNX body fails instead of attending to the future
        run_onnx("lowrank", q, k, v, params, scale=SCALE, causal=True)


def test_lowrank_pass_refuses_causal_sites_and_dense_masks(zoo):
    with pytest.raises(NoSitesError, match="causal attention: lowrank pools keys from the whole sequence"):
        attnopt.rewrite(zoo.onnx_path("gpt2-sdpa", "dynamo"), "lowrank", rank=4)
    with pytest.raises(NoSitesError, match="the mask is not key padding"):
        attnopt.rewrite(zoo.onnx_path("t5-encoder-eager", "dynamo"), "lowrank", rank=4)


@pytest.mark.parametrize("name", ["lsh", "routed"])
def test_bucket_passes_refuse_cross_attention(zoo, name):
    result = attnopt.rewrite(zoo.onnx_path("bart-eager", "dynamo"), name)
    refused = [o for o in result.report if o.status == "refused"]
    assert len(refused) == 2 and all(o.reason.startswith("cross-attention (N=") and name in o.reason
                                     for o in refused), result.to_dict()


# --- determinism ----------------------------------------------------------------------------------

def test_lsh_rewrite_is_byte_identical_for_a_seed(zoo, tmp_path):
    path = zoo.onnx_path("bert-eager", "dynamo")
    written = []
    for i, seed in enumerate((7, 7, 8)):
        out = tmp_path / f"lsh{i}.onnx"
        attnopt.rewrite(path, "lsh", n_buckets=4, n_rounds=2, chunk=4, seed=seed).save(out)
        written.append(out.read_bytes())
    assert written[0] == written[1]
    assert written[0] != written[2]  # the seed reaches the stored rotations
    rotations = [t for t in onnx.load_from_string(written[0]).graph.initializer if "rotations" in t.name]
    assert len(rotations) == 2 and onnx.numpy_helper.to_array(rotations[0]).shape == (2, 16, 2)


# --- zoo models through both frontends ------------------------------------------------------

APPROX = {"lsh": {"n_buckets": 4, "n_rounds": 2, "chunk": 2, "sinks": 1},
          "routed": {"n_clusters": 3, "top_k": 2, "chunk": 2},
          "lowrank": {"rank": 3, "method": "nystrom"}}
LIMIT = {"lsh": {"n_buckets": 1, "n_rounds": 2}, "routed": {"n_clusters": 1}, "lowrank": {"rank": 1 << 16}}
# Padding (bert), no mask (whisper), causal + GQA (llama) or a dense position bias (t5); lowrank serves neither
# of the last two, so it takes two more mask-free or padding-only families.
FAMILIES = {"lsh": ("bert-eager", "whisper-encoder-sdpa", "llama-gqa-sdpa", "t5-encoder-eager"),
            "routed": ("bert-sdpa", "whisper-encoder-eager", "llama-gqa-eager", "t5-encoder-eager"),
            "lowrank": ("bert-eager", "whisper-encoder-sdpa", "distilbert-sdpa", "clip-vision-sdpa")}
ZOO = [pytest.param(name, case, marks=pytest.mark.slow, id=f"{name}-{case}")
       for name, cases in FAMILIES.items() for case in cases]


def _onnx_inputs(path, built):
    names = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
    return {n: t.numpy() for n, t in zip(names, built.inputs)}


@pytest.mark.parametrize("name, case", ZOO)
def test_zoo_rewrite_through_onnx(zoo, tmp_path, name, case):
    path = zoo.onnx_path(case, "dynamo")
    inputs = _onnx_inputs(path, zoo.build(case))
    for params, exact in ((LIMIT[name], True), (APPROX[name], False)):
        result = attnopt.rewrite(path, name, **params)
        assert [o.status for o in result.report] == ["rewritten"] * 2, result.to_dict()
        out = tmp_path / f"{name}.onnx"
        result.save(out)
        onnx.checker.check_model(str(out), full_check=True)
        report = attnopt.validate(path, out, inputs=inputs)
        assert report.outputs and all(m.comparable for m in report.outputs)
        assert report.is_exact(1e-5) == exact, report.to_dict()


@pytest.mark.parametrize("name, case", ZOO)
def test_zoo_rewrite_through_fx(zoo, name, case):
    graph, example_inputs = zoo.fx_graph(case, "export")
    inputs = zoo.build(case).inputs
    for params, exact in ((LIMIT[name], True), (APPROX[name], False)):
        result = attnopt.rewrite(graph, name, example_inputs=example_inputs, **params)
        assert [o.status for o in result.report] == ["rewritten"] * 2, result.to_dict()
        report = attnopt.validate(graph, result.model, example_inputs=inputs)
        assert report.is_exact(1e-5) == exact, report.to_dict()
