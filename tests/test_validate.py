"""validate and inputs: semantics of random inputs, per-output and per-site metrics, ONNX and fx."""

from __future__ import annotations

import copy
import math

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

import attnopt
from attnopt.errors import AttnoptError
from attnopt.loaded import open_model
from attnopt.inputs import make_onnx_inputs, onnx_input_specs, resolve_shapes
from attnopt.validate import ValidationReport, compare, validate

VOCAB = 37


# --- models ------------------------------------------------------------------------


def tiny_bert_onnx(path, *, vocab=VOCAB, hidden=16, heads=2, seq="seq", batch="batch", layers=2, seed=0,
                   perturb_layer=None, rename_site_outputs=False):
    """A tiny BERT-style ONNX graph: embedding Gather, padding mask, ``layers`` decomposed attentions.

    ``perturb_layer`` scales that layer's softmax by 1.01 (the rewrite a buggy pass might make);
    ``rename_site_outputs`` renames every attention output (a rewrite that loses the names).
    """
    rng = np.random.default_rng(seed)
    d = hidden // heads
    inits, nodes = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def weight(name, shape, scale=0.3):
        return const(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    def node(op, ins, out, **attrs):
        nodes.append(helper.make_node(op, ins, [out], **attrs))
        return out

    weight("emb", (vocab, hidden), 1.0)
    const("heads_shape", np.array([0, 0, heads, d], np.int64))
    const("merge_shape", np.array([0, 0, hidden], np.int64))
    const("one", np.array(1.0, np.float32))
    const("neg", np.array(-10000.0, np.float32))
    const("scale", np.array(1.0 / math.sqrt(d), np.float32))
    const("bump", np.array(1.01, np.float32))
    const("axes12", np.array([1, 2], np.int64))
    x = node("Gather", ["emb", "input_ids"], "x0")
    m = node("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    m = node("Sub", ["one", m], "mask_inv")
    m = node("Mul", [m, "neg"], "mask_add")
    m = node("Unsqueeze", [m, "axes12"], "mask4")
    for i in range(layers):
        p = f"l{i}_"
        t = {}
        for name in "qkv":
            y = node("MatMul", [x, weight(p + "w" + name, (hidden, hidden))], p + name)
            y = node("Reshape", [y, "heads_shape"], p + name + "_h")
            t[name] = node("Transpose", [y], p + name + "_t", perm=[0, 2, 1, 3])
        kt = node("Transpose", [t["k"]], p + "kT", perm=[0, 1, 3, 2])
        s = node("MatMul", [t["q"], kt], p + "scores")
        s = node("Mul", [s, "scale"], p + "scaled")
        s = node("Add", [s, "mask4"], p + "masked")
        probs = node("Softmax", [s], p + "probs", axis=-1)
        if perturb_layer == i:
            probs = node("Mul", [probs, "bump"], p + "bumped")
        o = node("MatMul", [probs, t["v"]], p + ("renamed" if rename_site_outputs else "ctx"))
        o = node("Transpose", [o], p + "ctx_t", perm=[0, 2, 1, 3])
        o = node("Reshape", [o, "merge_shape"], p + "ctx_m")
        x = node("MatMul", [o, weight(p + "wo", (hidden, hidden))], p + "out")
    node("Identity", [x], "last_hidden_state")
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [batch, seq]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [batch, seq])]
    outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [batch, seq, hidden])]
    graph = helper.make_graph(nodes, "tiny_bert", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def named_inputs_onnx(path):
    """No embedding: token types, positions, two bool masks, ids and a float input, all echoed."""
    names = [("token_type_ids", TensorProto.INT64), ("position_ids", TensorProto.INT64),
             ("key_mask", TensorProto.BOOL), ("key_padding_mask", TensorProto.BOOL),
             ("input_ids", TensorProto.INT64), ("pixel_values", TensorProto.FLOAT)]
    ins = [helper.make_tensor_value_info(n, t, ["batch", "seq"]) for n, t in names]
    outs = [helper.make_tensor_value_info(f"{n}_out", t, ["batch", "seq"]) for n, t in names]
    nodes = [helper.make_node("Identity", [n], [f"{n}_out"]) for n, _ in names]
    model = helper.make_model(helper.make_graph(nodes, "echo", ins, outs),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.save(model, str(path))
    return str(path)


class TinyTorchAttention(nn.Module):
    def __init__(self, bump: float = 1.0):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.qkv, self.out = nn.Embedding(50, 16), nn.Linear(16, 48), nn.Linear(16, 16)
        self.bump = bump

    def forward(self, input_ids, attention_mask):
        x = self.emb(input_ids)
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, 2, 8).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(8)
        scores = scores + (1.0 - attention_mask[:, None, None, :].float()) * -1e4
        probs = scores.softmax(-1)
        if self.bump != 1.0:  # a Python-level branch: the traced graph has no Mul when there is no bump
            probs = probs * self.bump
        return self.out((probs @ v).transpose(1, 2).reshape(b, n, 16))


def torch_example(n: int = 10):
    ids = torch.randint(0, 50, (2, n), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, n, dtype=torch.long)
    mask[1, n - 3:] = 0
    return ids, mask


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return tiny_bert_onnx(tmp_path_factory.mktemp("m") / "tiny.onnx")


# --- inputs ------------------------------------------------------------------------


def test_ids_stay_below_the_embedding_rows_and_masks_pad_without_emptying_a_row(bert):
    model = open_model(bert).model
    specs = {s.name: s for s in onnx_input_specs(model)}
    assert specs["input_ids"].vocab == VOCAB
    feeds = make_onnx_inputs(model, 64, batch=3, seed=0)
    ids, mask = feeds["input_ids"], feeds["attention_mask"]
    assert ids.shape == mask.shape == (3, 64) and ids.dtype == mask.dtype == np.int64
    assert ids.min() >= 0 and ids.max() < VOCAB and ids.max() > VOCAB // 2
    assert set(np.unique(mask)) <= {0, 1}
    assert mask[0].all()  # row 0 is never padded
    for row in mask[1:]:
        assert row[0] == 1 and row.sum() < 64  # padded, never fully masked
        zeros = np.flatnonzero(row == 0)
        assert (zeros == np.arange(zeros[0], 64)).all()  # padding is trailing
    again = make_onnx_inputs(model, 64, batch=3, seed=0)
    assert all((again[k] == feeds[k]).all() for k in feeds)
    other = make_onnx_inputs(model, 64, batch=3, seed=1)
    assert not (other["input_ids"] == ids).all()


def test_inputs_follow_their_names(tmp_path):
    model = open_model(named_inputs_onnx(tmp_path / "echo.onnx")).model
    feeds = make_onnx_inputs(model, 12, batch=2)
    assert (feeds["token_type_ids"] == 0).all()
    assert (feeds["position_ids"] == np.arange(12)).all()
    assert feeds["key_mask"].dtype == np.bool_ and feeds["key_mask"][0].all() and feeds["key_mask"][1, 0]
    pad = feeds["key_padding_mask"]  # True marks padding: the inverse
    assert not pad[0].any() and not pad[1, 0] and pad[1, -1]
    assert feeds["input_ids"].max() < 100  # no embedding: the default vocab
    x = feeds["pixel_values"]
    assert x.dtype == np.float32 and x.shape == (2, 12) and abs(float(x.mean())) < 1 and x.std() > 0.5


def test_default_seq_len_is_128_for_a_symbolic_axis(bert):
    model = open_model(bert).model
    assert resolve_shapes(onnx_input_specs(model)) == {"input_ids": (2, 128), "attention_mask": (2, 128)}


def test_a_static_model_refuses_another_seq_len(tmp_path):
    path = tiny_bert_onnx(tmp_path / "static.onnx", seq=16, batch=1)
    with pytest.raises(AttnoptError) as e:
        validate(path, path, seq_len=512)
    assert str(e.value) == "model input 'input_ids' has static shape (1, 16); --seq-len 512 is not possible"
    assert validate(path, path, seq_len=16).is_exact()  # its own length is fine
    assert validate(path, path).inputs["input_ids"]["shape"] == [1, 16]  # default: the static size


def test_npz_inputs_are_used_and_checked(bert, tmp_path):
    ids = np.arange(2 * 9).reshape(2, 9) % VOCAB
    good = tmp_path / "good.npz"
    np.savez(good, input_ids=ids, attention_mask=np.ones((2, 9), np.int64))
    report = validate(bert, bert, inputs=str(good))
    assert report.inputs["input_ids"] == {"shape": [2, 9], "dtype": "int64"}
    bad = tmp_path / "bad.npz"
    np.savez(bad, input_ids=ids, mask=np.ones((2, 9), np.int64))
    with pytest.raises(AttnoptError, match="missing 'attention_mask'; unknown 'mask'"):
        validate(bert, bert, inputs=str(bad))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(AttnoptError, match="not a readable .npz"):
        validate(bert, bert, inputs=str(junk))
    with pytest.raises(AttnoptError, match="float32, the model wants int64"):
        validate(bert, bert, inputs={"input_ids": ids.astype(np.float32), "attention_mask": ids})


# --- metrics -----------------------------------------------------------------------


def test_compare_metrics():
    a = np.array([3.0, 4.0])
    assert compare("x", a, a).rel_l2 == 0 and compare("x", a, a).cosine == pytest.approx(1.0)
    m = compare("x", a, np.array([3.0, 4.5]))
    assert m.max_abs == pytest.approx(0.5) and m.rel_l2 == pytest.approx(0.1)
    assert compare("x", a, -a).cosine == pytest.approx(-1.0)
    assert not compare("x", a, np.zeros(3)).comparable
    assert np.isnan(compare("x", a, np.array([3.0, np.nan])).rel_l2)


# --- ONNX --------------------------------------------------------------------------


def test_a_model_against_itself_is_exact_per_output_and_per_site(bert):
    report = validate(bert, bert, seq_len=24)
    assert isinstance(report, ValidationReport) and report.is_exact()
    assert [m.name for m in report.outputs] == ["last_hidden_state"]
    assert [(m.name, m.value) for m in report.sites] == [("attention.0", "l0_ctx"), ("attention.1", "l1_ctx")]
    for m in report.outputs + report.sites:
        assert m.max_abs == 0 and m.rel_l2 == 0 and m.cosine == pytest.approx(1.0)
    assert report.sites[0].shape == (2, 2, 24, 8)
    d = report.to_dict()
    assert d["exact"] and d["worst_rel_l2"] == 0 and len(d["sites"]) == 2


def test_a_perturbed_copy_is_not_exact_and_the_site_shows_where(bert, tmp_path):
    bad = tiny_bert_onnx(tmp_path / "bad.onnx", perturb_layer=1)
    report = validate(bert, bad, seq_len=24)
    assert not report.is_exact()
    first, second = report.sites
    assert first.rel_l2 == 0  # layer 0 untouched
    assert second.rel_l2 == pytest.approx(0.01, rel=1e-3)
    assert report.outputs[0].rel_l2 > 1e-3
    assert report.worst_rel_l2 == max(m.rel_l2 for m in report.outputs + report.sites)


def test_a_deterministic_original_behind_an_inexact_comparison_gets_no_note(bert, tmp_path):
    """The second run of the original (paid only when the comparison is inexact) finds no noise in it."""
    bad = tiny_bert_onnx(tmp_path / "bad.onnx", perturb_layer=1)
    report = validate(bert, bad, seq_len=24)
    assert report.original_rerun_rel_l2 == 0.0 and not report.note
    assert validate(bert, bert, seq_len=8).original_rerun_rel_l2 is None  # exact: no second run


def _with_random_output(path, out_path, high: float = 0.1):
    """``path`` with RandomUniformLike noise (scale ``high``) added to its first output: a model that is not
    deterministic, as a dynamo export of a model left in training mode is (BEiT's drop path)."""
    model = onnx.load(str(path))
    out = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [f"{o}_clean" if o == out else o for o in node.output]
    model.graph.node.extend([
        helper.make_node("RandomUniformLike", [f"{out}_clean"], ["noise"], low=0.0, high=high),
        helper.make_node("Add", [f"{out}_clean", "noise"], [out]),
    ])
    onnx.save(model, str(out_path))
    return out_path


def test_a_random_original_is_named_in_the_report_and_the_cli(bert, tmp_path):
    from click.testing import CliRunner

    from attnopt.cli import main

    noisy = _with_random_output(bert, tmp_path / "noisy.onnx")
    rewritten = tmp_path / "noisy.seg.onnx"
    attnopt.rewrite(noisy, "segmented", segment_size=1 << 16).save(rewritten)
    report = validate(noisy, rewritten, seq_len=24)
    assert not report.is_exact() and report.original_rerun_rel_l2 > 1e-3
    assert "not deterministic" in report.note and report.to_dict()["note"] == report.note
    res = CliRunner().invoke(main, ["validate", str(noisy), str(rewritten), "--seq-len", "24"])
    assert res.exit_code == 0 and "not deterministic" in res.output


def test_random_ops_a_rerun_cannot_see_are_named(bert, tmp_path):
    """A random op whose draws leave a rerun unchanged (Segformer's drop path, floor(0.9 + U), mostly does)
    still draws other numbers in the rewritten model: the report names it from the graph."""
    quiet = _with_random_output(bert, tmp_path / "quiet.onnx", high=0.0)  # draws zeros: reruns agree
    bad = tiny_bert_onnx(tmp_path / "bad.onnx", perturb_layer=1)
    report = validate(quiet, bad, seq_len=24)
    assert not report.is_exact() and report.original_rerun_rel_l2 == 0.0
    assert report.random_ops == {"RandomUniformLike": 1}
    assert "random ops (RandomUniformLike ×1" in report.note and report.to_dict()["random_ops"] == report.random_ops
    assert validate(bert, bad, seq_len=24).random_ops == {}


def test_dropout_exported_in_training_mode_is_named(bert, tmp_path):
    """A dynamo export can keep Dropout with training_mode=True (mT5, Switch): a random op, named as such."""
    model = onnx.load(str(bert))
    out = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [f"{o}_clean" if o == out else o for o in node.output]
    model.graph.initializer.extend([onnx.numpy_helper.from_array(np.array(0.0, np.float32), "ratio"),
                                    onnx.numpy_helper.from_array(np.array(True), "training")])
    model.graph.node.append(helper.make_node("Dropout", [f"{out}_clean", "ratio", "training"], [out]))
    dropped = tmp_path / "dropout.onnx"
    onnx.save(model, str(dropped))
    report = validate(dropped, tiny_bert_onnx(tmp_path / "bad.onnx", perturb_layer=1), seq_len=24)
    assert report.random_ops == {"Dropout in training mode": 1} and "Dropout in training mode ×1" in report.note


def test_a_site_missing_from_the_rewrite_is_reported_not_dropped(bert, tmp_path):
    renamed = tiny_bert_onnx(tmp_path / "renamed.onnx", rename_site_outputs=True)
    report = validate(bert, renamed, seq_len=8)
    assert [m.name for m in report.sites] == ["attention.0", "attention.1"]
    assert all(not m.comparable and "not comparable" in m.note for m in report.sites)
    assert report.outputs[0].rel_l2 == 0 and report.is_exact()  # outputs still compared


def test_sites_can_be_selected_or_skipped(bert):
    assert [m.name for m in validate(bert, bert, seq_len=8, sites=["attention.1"]).sites] == ["attention.1"]
    assert validate(bert, bert, seq_len=8, sites=[]).sites == []
    with pytest.raises(AttnoptError, match="no attention site named 'nope'"):
        validate(bert, bert, sites=["nope"])


def test_mismatched_models_are_refused(bert, tmp_path):
    other = named_inputs_onnx(tmp_path / "echo.onnx")
    with pytest.raises(AttnoptError, match="inputs .* differ"):
        validate(bert, other)
    gm = torch.fx.symbolic_trace(TinyTorchAttention())
    with pytest.raises(AttnoptError, match="cannot compare an ONNX model with a torch model"):
        validate(bert, gm, example_inputs=torch_example())


def test_attnopt_validate_stays_callable_after_the_module_is_imported(bert):
    import attnopt.validate  # noqa: F401  (rebinds the package attribute to the module)

    assert attnopt.validate(bert, bert, seq_len=8).is_exact()


# --- fx ----------------------------------------------------------------------------


def test_fx_graph_module_against_itself_and_a_perturbed_copy():
    gm = torch.fx.symbolic_trace(TinyTorchAttention())
    example = torch_example()
    report = validate(gm, copy.deepcopy(gm), example_inputs=example)
    assert report.kind == "fx" and report.is_exact()
    assert [m.name for m in report.sites] == ["attention.0"] and report.sites[0].shape == (2, 2, 10, 8)
    assert report.sites[0].rel_l2 == 0 and report.sites[0].cosine == pytest.approx(1.0)
    bumped = torch.fx.symbolic_trace(TinyTorchAttention(bump=1.01))
    bad = validate(gm, bumped, example_inputs=example)
    assert not bad.is_exact() and bad.sites[0].rel_l2 == pytest.approx(0.01, rel=1e-3)


def test_fx_seq_len_resizes_the_examples():
    gm = torch.fx.symbolic_trace(TinyTorchAttention())
    report = validate(gm, gm, example_inputs=torch_example(), seq_len=33)
    assert report.inputs["input_ids"]["shape"] == [2, 33] and report.sites[0].shape == (2, 2, 33, 8)


def test_exported_program_with_a_static_length_refuses_another():
    ep = torch.export.export(TinyTorchAttention(), torch_example())
    assert validate(ep, ep).is_exact()
    with pytest.raises(AttnoptError, match=r"static shape \(2, 10\); --seq-len 12 is not possible"):
        validate(ep, ep, seq_len=12)


# --- end to end with the real rewrite ---------------------------------------------


def test_segmented_at_the_limit_is_exact_and_below_it_is_not(bert, tmp_path):
    n = 24
    exact = attnopt.rewrite(bert, "segmented", segment_size=n)
    report = validate(bert, exact, seq_len=n)
    assert report.is_exact(), report.to_dict()
    assert all(m.comparable for m in report.sites) and len(report.sites) == 2
    approx = attnopt.rewrite(bert, "segmented", segment_size=8)
    path = tmp_path / "seg8.onnx"
    approx.save(path)
    report = validate(bert, str(path), seq_len=n)
    assert all(m.comparable for m in report.sites)  # the rewrite kept the site output names
    assert not report.is_exact() and report.worst_rel_l2 > 1e-3


def test_fx_segmented_at_the_limit_is_exact():
    example = torch_example()
    gm = torch.fx.symbolic_trace(TinyTorchAttention())
    result = attnopt.rewrite(copy.deepcopy(gm), "segmented", segment_size=16, example_inputs=example)
    report = validate(gm, result, example_inputs=example)
    assert report.is_exact(), report.to_dict()
    assert report.sites and all(m.comparable for m in report.sites)
