"""Structured masks (VARIANTS.md): causal and key padding recognised, in every exporter form.

HF decoders (GPT-2, Llama, Mistral, Qwen2) build a causal-plus-padding N×M mask at
run time from ``attention_mask``; detection must report such a site as causal with
the (B, M) ``attention_mask`` input as key padding and no dense mask left. Encoders
(BERT) report key padding only. Masks that are something else (a float cross mask,
T5's position bias, a sliding window, strict or anti-causal rules) stay dense.

After a segmented rewrite at S >= N, no value of the rewritten graph has both an N
and an M dimension, and the rewrite equals the original with right padding.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

import attnopt
from attnopt import mask_analysis
from attnopt.cli import main
from attnopt.loaded import open_model
from attnopt.match import detect_sites
from attnopt.site import MASK_BOOLEAN, MASK_BOOLEAN_BLOCKED, MASK_NONZERO_KEEP

import zoo as zoo_lib
from test_ort_cuda import _cuda_ep

DECODERS = ("gpt2", "llama-gqa", "mistral-gqa", "qwen2-gqa")
ENCODERS = ("bert",)
SEQ = zoo_lib.SEQ
SEGMENT = 16  # >= every zoo sequence length: segmented's exact limit


def _decoder(case, how) -> bool:
    return case.family in DECODERS


def _static_decoder(case, how) -> bool:
    return case.family in DECODERS and not case.name.endswith("-dynamic")


def _encoder(case, how) -> bool:
    return case.family in ENCODERS and how != zoo_lib.ORT_FUSED


def _padding_input(loaded, site) -> str | None:
    """The name of the graph input a site's key padding reads, or None."""
    kp = site.key_padding
    if kp is None:
        return None
    view = loaded.view
    assert view.op(kp.value.node) == "input", f"{site.name}: key padding is not a graph input: {kp}"
    return view.info(kp.value.node).name or kp.value.node


def _fx_input_name(graph, input_name: str, built) -> str:
    """The placeholder of the case's input ``input_name`` in an ExportedProgram."""
    index = list(built.input_names).index(input_name)
    return graph.graph_signature.user_inputs[index]


def _check_decoder_sites(loaded, mask_input: str, where: str) -> None:
    assert loaded.sites, where
    for s in loaded.sites:
        detail = f"{where}: {s.summary()} masks={s.masks} key_padding={s.key_padding}"
        assert s.causal is True, detail
        assert s.masks == (), detail
        assert s.key_padding is not None and s.key_padding.kind in (MASK_NONZERO_KEEP, MASK_BOOLEAN), detail
        assert _padding_input(loaded, s) == mask_input, detail


# ----------------------------------------------------------------------------- detect: decoders

@pytest.mark.zoo(select=_decoder)
def test_onnx_decoder_is_causal_with_key_padding(zoo_onnx_case):
    where = zoo_onnx_case.id
    _check_decoder_sites(open_model(zoo_onnx_case.path), "attention_mask", where)
    for s in attnopt.detect(zoo_onnx_case.path):
        assert s.causal and not s.masks and s.key_padding.kind == MASK_NONZERO_KEEP, (where, s.summary())
    data = json.loads(_cli("detect", zoo_onnx_case.path, "--json").stdout)
    assert len(data["sites"]) == zoo_onnx_case.case.expected_sites
    for s in data["sites"]:
        assert s["causal"] is True and s["key_padding"] == MASK_NONZERO_KEEP and s["mask_kind"] is None, (where, s)


@pytest.mark.zoo(select=_decoder)
def test_fx_decoder_is_causal_with_key_padding(zoo_fx_case, zoo):
    built = zoo.build(zoo_fx_case.case.name)
    placeholder = _fx_input_name(zoo_fx_case.graph, "attention_mask", built)
    _check_decoder_sites(open_model(zoo_fx_case.graph), placeholder, zoo_fx_case.id)
    # The runnable GraphModule (what fx rewrites edit) reads the same.
    _check_decoder_sites(open_model(zoo_fx_case.graph, mutable=True), placeholder, zoo_fx_case.id + " .module()")
    for s in attnopt.detect(zoo_fx_case.graph):
        assert s.causal and not s.masks and s.key_padding is not None, (zoo_fx_case.id, s.summary())


# ----------------------------------------------------------------------------- detect: encoders, negatives

@pytest.mark.zoo(select=_encoder)
def test_onnx_encoder_has_key_padding_and_is_not_causal(zoo_onnx_case):
    loaded = open_model(zoo_onnx_case.path)
    for s in loaded.sites:
        assert s.causal is False and s.masks == () and s.key_padding is not None, (zoo_onnx_case.id, s.summary())
        if s.key_padding.kind == MASK_NONZERO_KEEP:
            assert _padding_input(loaded, s) == "attention_mask", s
    data = json.loads(_cli("detect", zoo_onnx_case.path, "--json").stdout)
    assert all(s["causal"] is False and s["key_padding"] is not None for s in data["sites"]), data


@pytest.mark.zoo(select=_encoder)
def test_fx_encoder_has_key_padding_and_is_not_causal(zoo_fx_case):
    for s in attnopt.detect(zoo_fx_case.graph, example_inputs=zoo_fx_case.example_inputs):
        assert s.causal is False and s.masks == () and s.key_padding is not None, (zoo_fx_case.id, s.summary())


def _bart(case, how) -> bool:
    return case.family == "bart"


def _check_bart(loaded, mask_input: str, where: str) -> None:
    """Encoder self-attention and cross attention: key padding only; decoder self-attention: causal."""
    for s in loaded.sites:
        detail = (where, s.summary(), s.masks)
        assert s.masks == (), detail
        if ".decoder." in f".{s.name}." and s.is_self_attention:
            assert s.causal is True and s.key_padding is None, detail  # no decoder_attention_mask input
        else:
            assert s.causal is False and _padding_input(loaded, s) == mask_input, detail


@pytest.mark.zoo(select=_bart)
def test_onnx_bart(zoo_onnx_case):
    _check_bart(open_model(zoo_onnx_case.path), "attention_mask", zoo_onnx_case.id)


@pytest.mark.zoo(select=_bart)
def test_fx_bart(zoo_fx_case, zoo):
    placeholder = _fx_input_name(zoo_fx_case.graph, "attention_mask", zoo.build(zoo_fx_case.case.name))
    _check_bart(open_model(zoo_fx_case.graph), placeholder, zoo_fx_case.id)


@pytest.mark.zoo(select=lambda case, how: case.name == "torch-encoder-padmask")
def test_onnx_torch_padding_mask_is_key_padding_not_causal(zoo_onnx_case):
    """nn.TransformerEncoder expands src_key_padding_mask (True = pad) per head to (B, H, 1, M)."""
    loaded = open_model(zoo_onnx_case.path)
    for s in loaded.sites:
        assert s.causal is False and s.masks == () and s.key_padding.kind == MASK_BOOLEAN_BLOCKED, s.summary()
        assert _padding_input(loaded, s) == "padding_mask"


@pytest.mark.zoo(select=lambda case, how: case.name == "hand-additive-mask-cross")
def test_onnx_float_cross_mask_stays_dense(zoo_onnx_case):
    (site,) = attnopt.detect(zoo_onnx_case.path)
    assert site.causal is False and site.key_padding is None and len(site.masks) == 1, site


@pytest.mark.zoo(select=lambda case, how: case.family in ("t5", "t5-encoder") and how != zoo_lib.SYMBOLIC_TRACE)
def test_onnx_t5_position_bias_is_not_taken_for_causal_or_padding(zoo_onnx_case):
    _check_t5(zoo_onnx_case.case, attnopt.detect(zoo_onnx_case.path), zoo_onnx_case.id)


@pytest.mark.zoo(select=lambda case, how: case.family in ("t5", "t5-encoder"))
def test_fx_t5_position_bias_is_not_taken_for_causal_or_padding(zoo_fx_case):
    _check_t5(zoo_fx_case.case, attnopt.detect(zoo_fx_case.graph, example_inputs=zoo_fx_case.example_inputs),
              zoo_fx_case.id)


def _check_t5(case, sites, where: str) -> None:
    """Self-attention adds a learned position bias: that term stays dense. Encoder sites are never
    called causal (decoder self-attention is causal); a padding term apart from the bias may be key padding."""
    selves = [s for s in sites if s.is_self_attention]
    assert len(selves) == case.self_attention_sites, where
    assert sum(s.causal for s in sites) <= case.causal_sites, (where, [s.summary() for s in sites])
    for s in selves:
        assert s.masks, (where, s.summary())
        assert s.key_padding is None or s.key_padding.kind == MASK_NONZERO_KEEP, (where, s.key_padding)
        if ".encoder." in f".{s.name}.":
            assert s.causal is False, (where, s.summary(), s.masks)


def test_refinement_can_be_switched_off(zoo, monkeypatch):
    path = zoo.onnx_path("gpt2-eager", zoo_lib.DYNAMO)
    loaded = open_model(path)
    loaded.sites = detect_sites(loaded.view)  # as the matcher found them, before refinement
    dense = mask_analysis.refine_structured_masks(loaded, enabled=False)
    assert dense == loaded.sites and all(not s.causal and s.masks and s.key_padding is None for s in dense)
    assert all(s.causal and not s.masks for s in mask_analysis.refine_structured_masks(loaded))
    monkeypatch.setenv(mask_analysis.ENV_SWITCH, "0")
    assert all(not s.causal and s.masks for s in attnopt.detect(path))


def test_one_probe_per_model_and_one_evaluation_per_distinct_mask(zoo, monkeypatch):
    from attnopt.frontends.onnx_frontend import OnnxFrontend
    calls = []
    make = OnnxFrontend.value_probe

    def counting(self, loaded, refs):
        calls.append(list(refs))
        return make(self, loaded, refs)

    monkeypatch.setattr(OnnxFrontend, "value_probe", counting)
    loaded = open_model(zoo.onnx_path("gpt2-sdpa", zoo_lib.TORCHSCRIPT))  # one mask construction per layer
    loaded.sites = detect_sites(loaded.view)
    calls.clear()
    sites = mask_analysis.refine_structured_masks(loaded)
    distinct = {t.value for s in loaded.sites for t in s.masks}
    assert len(calls) == 1 and sorted(calls[0]) == sorted(distinct), calls
    assert all(s.causal for s in sites)
    calls.clear()
    mask_analysis.refine_structured_masks(open_model(zoo.onnx_path("hand-scale-q", zoo_lib.DYNAMO)))
    assert calls == []  # no mask, no probe


def test_onnx_probe_reads_shapes_not_embeddings(zoo, monkeypatch):
    """HF masks read inputs_embeds' shape; the probe rebuilds it from the inputs, copying no weights."""
    from attnopt.frontends import onnx_probe

    built = []
    make = onnx_probe._pruned_model

    def spy(*args):
        built.append(make(*args))
        return built[-1]

    monkeypatch.setattr(onnx_probe, "_pruned_model", spy)
    loaded = open_model(zoo.onnx_path("llama-gqa-sdpa-dynamic", zoo_lib.TORCHSCRIPT))
    assert all(s.causal and s.key_padding is not None for s in loaded.sites)
    (pruned,) = built
    assert not [i.name for i in pruned.graph.initializer if np.prod(i.dims) > 16], pruned.graph.initializer


# ----------------------------------------------------------------------------- hand-built mask rules

class _OneLayer(nn.Module):
    """One attention layer (2 heads of 8 over x (B, N, 16)) whose scores a subclass masks by ``rule``."""

    def __init__(self, rule: str, window: int):
        super().__init__()
        torch.manual_seed(0)
        self.rule, self.window = rule, window
        self.qkv = nn.Linear(16, 48)

    def heads_and_positions(self, x):
        """(q, k, v) as (B, 2, N, 8), and the query and key positions i (N, 1), j (1, N)."""
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, 2, 8).permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v, torch.arange(n, device=x.device)[:, None], torch.arange(n, device=x.device)[None, :]

    @staticmethod
    def attend(scores, v, x):
        """softmax(scores) @ v, back to x's (B, N, 16)."""
        b, n, _ = x.shape
        return ((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, 16),)


class RuleMasked(_OneLayer):
    """One attention layer whose boolean mask is built at run time from ``attention_mask`` by a rule."""

    def __init__(self, rule: str, window: int = 3):
        super().__init__(rule, window)

    def forward(self, x, attention_mask):
        b, n, _ = x.shape
        q, k, v, i, j = self.heads_and_positions(x)
        allowed = {
            "causal": j <= i,
            "bidirectional": torch.ones(n, n, dtype=torch.bool, device=x.device),
            "window": (j <= i) & (j > i - self.window),
            "window_ge": (j <= i) & (j >= i - self.window),  # written the other way: window + 1 keys
            "window_const": (j <= i) & (j > i - self.window),  # no padding: a static export folds it
            "strict": j < i,
            "anticausal": j >= i,
            "headpad": torch.ones(1, n, dtype=torch.bool, device=x.device),  # one row per head, every query
        }[self.rule]
        allowed = allowed[None, None]
        if self.rule != "window_const":
            allowed = allowed & (attention_mask[:, None, None, :] != 0)
        if self.rule == "headpad":  # (B, H, 1, M): not (B, 1, 1, M), so only the probe can call it padding
            allowed = allowed.expand(b, 2, 1, n)
        scores = (q @ k.transpose(-1, -2)) * 8**-0.5
        return self.attend(scores.masked_fill(~allowed, torch.finfo(scores.dtype).min), v, x)


def _rule_inputs(n: int = SEQ):
    x = torch.randn(2, n, 16, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, n, dtype=torch.long)
    mask[1, n - 3:] = 0
    return x, mask


def _rule_export(rule: str, dynamic: bool, **kw):
    dims = ({0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO},) * 2 if dynamic else None
    return torch.export.export(RuleMasked(rule, **kw).eval(), _rule_inputs(), dynamic_shapes=dims)


def _rule_onnx(rule: str, path, **kw):
    with zoo_lib.quiet():
        torch.onnx.export(RuleMasked(rule, **kw).eval(), _rule_inputs(), str(path), dynamo=False,
                          opset_version=17, input_names=["x", "attention_mask"],
                          dynamic_axes={"x": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}})
    return path


# (rule, causal, padding); "window" rules also name the window the term must be marked with
_WINDOW_RULES = [("window", "window", True, 3), ("window_ge", "window", True, 4), ("window_const", "window", False, 3)]


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("rule,causal,padding,window", [("causal", True, True, 0), ("bidirectional", False, True, 0),
                                                        ("headpad", False, True, 0), *_WINDOW_RULES,
                                                        ("strict", None, None, 0), ("anticausal", None, None, 0)])
def test_mask_rules_fx(rule, causal, padding, window, dynamic):
    """window_const static: torch.export folds the whole construction, so the window is read off the constant."""
    (site,) = attnopt.detect(_rule_export(rule, dynamic))
    _check_rule(site, causal, padding, f"{rule} fx {'dynamic' if dynamic else 'static'}", window)


@pytest.mark.parametrize("rule,causal,padding,window", [("causal", True, True, 0), ("headpad", False, True, 0),
                                                        *_WINDOW_RULES, ("anticausal", None, None, 0)])
def test_mask_rules_onnx(rule, causal, padding, window, tmp_path):
    (site,) = attnopt.detect(_rule_onnx(rule, tmp_path / f"{rule}.onnx"))
    _check_rule(site, causal, padding, f"{rule} onnx", window)


def test_a_folded_window_in_a_dynamo_export_is_found(tmp_path):
    """The dynamo exporter folds a static sliding window (no padding) into an N×N initializer."""
    with zoo_lib.quiet():
        torch.onnx.export(RuleMasked("window_const").eval(), _rule_inputs(), str(tmp_path / "w.onnx"), dynamo=True,
                          input_names=["x", "attention_mask"])
    (site,) = attnopt.detect(tmp_path / "w.onnx")
    _check_rule(site, "window", False, "window_const dynamo", 3)


def _check_rule(site, causal, padding, where: str, window: int = 3) -> None:
    if causal is None:  # not causal-plus-padding: the mask stays as it is
        assert not site.causal and site.key_padding is None and site.masks, (where, site)
    elif causal == "window":  # causal (plus padding) plus a sliding window: the term stays whole, marked
        assert not site.causal and site.key_padding is None, (where, site)
        assert [t.window for t in site.masks] == [window], (where, site)
        assert (site.masks[0].window_padding is not None) is padding, (where, site)
    else:
        assert site.causal is causal and not site.masks and (site.key_padding is not None) is padding, (where, site)


@pytest.mark.parametrize("form", ["fx", "onnx"])
def test_a_window_wider_than_the_probes_is_found(form, tmp_path):
    """Mistral v0.1's 4096-token window looks causal at every small length: the probe must reach past it (and
    must not take it for plain causality)."""
    if form == "fx":
        (site,) = attnopt.detect(_rule_export("window", True, window=100))
    else:
        (site,) = attnopt.detect(_rule_onnx("window", tmp_path / "w.onnx", window=100))
    _check_rule(site, "window", True, form, window=100)
    if form == "onnx":
        detected = CliRunner().invoke(main, ["detect", str(tmp_path / "w.onnx")])
        assert "sliding window 100" in detected.output, detected.output


@pytest.mark.parametrize("form,rule", [("fx", "window"), ("onnx", "window"), ("fx", "window_ge"),
                                       ("fx-static", "window_const"), ("onnx-dynamo", "window_const"),
                                       # at static shapes the dynamo exporter folds the positions: the length
                                       # is read off the probe's values (_seen_window_hypotheses)
                                       ("onnx-dynamo", "window"), ("onnx-dynamo", "window_ge")])
def test_a_sliding_window_term_is_left_out_where_the_op_reaches_no_farther(form, rule, tmp_path):
    """A causal sliding window of W keys (3; 4 written as j ≥ i − 3; 3 folded to a constant, no padding):
    window W or segments of W see no key W back, so the op gets the causal flag and key padding alone and no
    N×M mask is built; window W + 1 reaches past it and keeps the term. Every rewrite equals the same
    variant's spec with the window applied as a mask."""
    from attnopt.kernels.registry import get_variant

    w = 4 if rule == "window_ge" else 3
    x, pad = _rule_inputs()
    pad[1] = 1
    pad[1, -1] = 0  # every query keeps a key in its window (HF un-masks rows with none: not compared)
    model = RuleMasked(rule).eval()
    if form.startswith("fx"):
        source = _rule_export(rule, form != "fx-static")
    elif form == "onnx-dynamo":
        source = str(tmp_path / "w.onnx")
        with zoo_lib.quiet():
            torch.onnx.export(model, _rule_inputs(), source, dynamo=True, input_names=["x", "attention_mask"])
    else:
        source = str(_rule_onnx(rule, tmp_path / "w.onnx"))
    q, k, v = model.qkv(x).view(2, SEQ, 3, 2, 8).permute(2, 0, 3, 1, 4).unbind(0)
    i, j = torch.arange(SEQ)[:, None], torch.arange(SEQ)[None, :]
    site_window = torch.where((j > i - w), 0.0, float("-inf"))[None, None]
    kp = None if rule == "window_const" else torch.where(pad != 0, 0.0, float("-inf"))
    for variant, params, kept in (("window", {"window": w}, False), ("segmented", {"segment_size": w}, False),
                                  ("window", {"window": w + 1}, True)):
        result = attnopt.rewrite(source, variant, **params)
        with torch.no_grad():
            want = get_variant(variant).reference(q, k, v, **params, scale=8 ** -0.5, mask=site_window,
                                                  key_padding=kp, causal=True)
            want = want.transpose(1, 2).reshape(2, SEQ, 16)
            # whether the op reads a mask: the term (fx: an argument, not None; ONNX: not the constant zero)
            if form.startswith("fx"):
                got = result.model(x, pad)[0]
                (op,) = [n for n in result.model.graph.nodes if "attnopt" in str(n.target)]
                has_term = op.args[3] is not None
            else:
                out = tmp_path / f"{variant}{params}.onnx"
                result.save(out)
                got = torch.from_numpy(ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
                    None, {"x": x.numpy(), "attention_mask": pad.numpy()})[0])
                (op,) = [n for n in result.model.graph if n.op_type == get_variant(variant).onnx_op_type]
                producer = op.inputs[3].producer()  # None: an initializer (the folded term itself)
                has_term = producer is None or producer.op_type != "Constant"
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert has_term == kept, (form, variant, params)


class TwoMasks(_OneLayer):
    """One attention layer that masks its scores twice, in the orders GPT-Neo and GPT-1 use and one more: what a
    row both masks block whole gets depends on each mask's fill and on which comes first (AttentionSite.
    blocked_groups)."""

    def __init__(self, rule: str, window: int = 0):
        super().__init__(rule, window)
        self.register_buffer("bias", torch.tril(torch.ones(64, 64)).view(1, 1, 64, 64))  # GPT-1's, sliced

    def forward(self, x, attention_mask):
        n = x.shape[1]
        q, k, v, i, j = self.heads_and_positions(x)
        causal = j <= i
        if self.window:
            causal = causal & (j > i - self.window)
        low = torch.finfo(x.dtype).min
        padding = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * low  # (B, 1, 1, M), HF's
        s = (q @ k.transpose(-1, -2)) * 8**-0.5
        if self.rule == "neo":  # where(causal, s, min), then + the 4-D causal-and-padding mask
            s = torch.where(causal, s, torch.tensor(low)) + torch.where(
                (j <= i) & (attention_mask[:, None, None, :] != 0), 0.0, low)
        elif self.rule == "gpt1":  # a blend with -1e4 by a constant causal table, then + the padding
            keep = self.bias[:, :, :n, :n]
            s = s * keep + -1e4 * (1 - keep) + padding
        else:  # "pad-first": + the padding, then where(causal, s, -1e4), which replaces what the padding added
            s = torch.where(causal, s + padding, torch.tensor(-1e4))
        return self.attend(s, v, x)


class BiasedCausal(_OneLayer):
    """HF's causal-and-padding mask (finfo.min) over scores plus a bias the hidden states compute: ``rule``
    "plain" is Inkling's form (zero past 3 keys back); "filled" also fills some keys with -1e9, so the bias blocks
    keys of its own."""

    def __init__(self, rule: str):
        super().__init__(rule, 0)
        self.r = nn.Linear(16, 2)

    def forward(self, x, attention_mask):
        q, k, v, i, j = self.heads_and_positions(x)
        bias = (self.r(x).transpose(1, 2)[..., None] * (i - j).float()).masked_fill((i - j < 0) | (i - j >= 3), 0.0)
        if self.rule == "filled":
            bias = bias.masked_fill((i + j) % 3 == 0, -1e9)
        low = torch.finfo(x.dtype).min
        mask = torch.where((j <= i) & (attention_mask[:, None, None, :] != 0), 0.0, low)
        return self.attend(q @ k.transpose(-1, -2) * 8**-0.5 + bias + mask, v, x)


@pytest.mark.parametrize("rule, finite", [("plain", True), ("filled", False)])
def test_a_bias_no_fill_reaches_leaves_blocked_rows_to_the_mean(rule, finite):
    """A row the padding blocks whole is uniform in the original: finfo.min swallows scores and bias alike. The
    rewrite gives it the mean where the bias is finite (no fill reaches it: MaskTerm.finite). A bias that fills
    keys of its own may block them, and is not read as finite (what such a row gets is then not proven)."""
    x, pad = _rule_inputs()
    program = torch.export.export(BiasedCausal(rule).eval(), (x, pad))
    (site,) = attnopt.detect(program)
    (term,) = site.masks
    assert site.causal and site.key_padding is not None and term.finite == finite, site
    if finite:
        result = attnopt.rewrite(program, "segmented", segment_size=SEQ)
        blocked = pad.clone()
        blocked[1] = 1
        blocked[1, :3] = 0
        report = attnopt.validate(program, result.model, example_inputs=(x, blocked))
        assert report.is_exact(1e-5), report.to_dict()


@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic", "static"])
@pytest.mark.parametrize("form", ["fx", "onnx"])
@pytest.mark.parametrize("rule, window, groups", [
    ("neo", 0, (("past",),)),
    ("neo", 3, (("past", "older_kept"),)),
    ("gpt1", 0, (("future_kept",), ("past", "future"))),
    ("pad-first", 0, (("future", "future_kept"), ("past",))),
])
def test_rows_two_masks_block_get_what_the_original_gives_them(form, dynamic, rule, window, groups, tmp_path):
    """Rows whose keys are all padded where causality (and the window) would let them look: the original gives
    each the mean over the keys its masks leave the greatest value; the rewrite at segmented's limit equals it.
    The padding covers the first keys and a run in the middle longer than the window, so rows inside it also
    have unpadded keys farther back ("older_kept")."""
    model = TwoMasks(rule, window).eval()
    x, pad = _rule_inputs()
    example = (x, pad)
    # GPT-1's sliced table is a constant at static shapes (the matcher's causal flag, AttentionSite.causal_term)
    # and computed at dynamic ones (mask analysis proves its blend causal)
    if form == "fx":
        source = torch.export.export(model, example, dynamic_shapes=({0: torch.export.Dim.AUTO,
                                                                       1: torch.export.Dim.AUTO},) * 2
                                     if dynamic else None)
    else:
        source = str(tmp_path / "two.onnx")
        with zoo_lib.quiet():
            torch.onnx.export(model, example, source, dynamo=False, opset_version=17,
                              input_names=["x", "attention_mask"],
                              dynamic_axes={"x": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
                              if dynamic else None)
    (site,) = attnopt.detect(source)
    assert (site.blocked_rows, site.blocked_groups) == ("groups", groups), site
    assert site.summary()["blocked_groups"] == [list(g) for g in groups]  # what `attnopt detect --json` shows
    blocked = pad.clone()
    blocked[1, :3] = 0
    blocked[1, 5:9] = 0  # rows 5..8 of a window of 3 see only padding, keys 3 and 4 before it do not
    result = attnopt.rewrite(source, "segmented", segment_size=SEQ)
    if form == "fx":
        report = attnopt.validate(source, result.model, example_inputs=(x, blocked))
    else:
        result.save(tmp_path / "rewritten.onnx")
        report = attnopt.validate(source, tmp_path / "rewritten.onnx",
                                  inputs={"x": x.numpy(), "attention_mask": blocked.numpy()})
    assert report.is_exact(1e-5), report.to_dict()


def test_fx_export_of_the_correction_keeps_its_running_sums_off_cumsum(tmp_path):
    """An fx-rewritten layer with the blocked-row correction, exported to ONNX: its running sums become
    ai.attnopt::PrefixSum (onnxruntime's CUDA CumSum is O(L²)), no CumSum is left, and onnxruntime's output
    equals torch's on rows the masks block whole."""
    from attnopt.kernels.onnx_functions import all_nodes

    x, pad = _rule_inputs()
    result = attnopt.rewrite(torch.export.export(TwoMasks("neo", 3).eval(), (x, pad)), "segmented",
                             segment_size=SEQ)
    blocked = pad.clone()
    blocked[1, :3] = 0
    blocked[1, 5:9] = 0
    path = attnopt.export_onnx(result.model, (x, blocked), tmp_path / "fx.onnx", input_names=["x", "attention_mask"])
    proto = onnx.load(str(path))
    calls = [n.op_type for n in proto.graph.node if n.domain == "ai.attnopt"]
    assert calls.count("PrefixSum") == 3, calls  # the kept-key count and the two sums of the values
    assert "CumSum" not in {n.op_type for n in all_nodes(proto.graph.node)}
    onnx.checker.check_model(proto, full_check=True)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy(), "attention_mask": blocked.numpy()})[0]
    with torch.no_grad():
        want = result.model(x, blocked)[0]
    np.testing.assert_allclose(got, want.numpy(), atol=1e-6, rtol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not _cuda_ep(), reason="needs a GPU and onnxruntime-gpu")
@pytest.mark.parametrize("rule, window", [("neo", 0), ("neo", 3), ("pad-first", 0)])
def test_blocked_row_correction_on_the_cuda_provider_equals_the_cpu_provider(rule, window, tmp_path):
    """The correction's running sums (ai.attnopt::PrefixSum) on onnxruntime's CUDA provider, over a length of
    several scan blocks that is a multiple of none, give what the CPU provider gives."""
    source = tmp_path / "two.onnx"
    with zoo_lib.quiet():
        torch.onnx.export(TwoMasks(rule, window).eval(), _rule_inputs(), str(source), dynamo=False,
                          opset_version=17, input_names=["x", "attention_mask"],
                          dynamic_axes={"x": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}})
    result = attnopt.rewrite(str(source), "segmented", segment_size=SEQ)
    result.save(tmp_path / "rewritten.onnx")
    x, pad = _rule_inputs(300)
    pad[1, :37] = 0
    pad[1, 100:140] = 0
    feeds = {"x": x.numpy(), "attention_mask": pad.numpy()}
    cpu, cuda = (ort.InferenceSession(str(tmp_path / "rewritten.onnx"), providers=[provider]).run(None, feeds)[0]
                 for provider in ("CPUExecutionProvider", ("CUDAExecutionProvider", {"use_tf32": "0"})))
    np.testing.assert_allclose(cuda, cpu, atol=1e-4, rtol=0)
    assert np.abs(cpu[1, :37]).max() > 0  # the padded rows got a mean, not zeros


@pytest.mark.parametrize("name", [
    "llama-gqa-eager", "gemma2-eager", "xglm-eager",
    "bloom-eager",  # ALiBi stays a dense term beside the structured mask: the fill swallows it too
    "inkling-eager",  # so does a bias the hidden states compute, which no fill reaches (MaskTerm.finite)
    "falcon-alibi-eager", "falcon-alibi-sdpa",
    "gpt-oss-eager",  # learned sinks: the original gives such a row 0 (all its weight on the sink), as the ops
    # two masks one after the other (AttentionSite.blocked_groups): GPT-Neo's where(causal, s, finfo.min) and then
    # its 4-D causal-and-padding mask add to -inf past the row, so the row is the mean of its causal prefix (its
    # local layers': of the window's keys and the unpadded ones before it); GPT-1's causal blend gives later keys
    # -1e4, which beats the padding's finfo.min, so the row is the mean of the later unpadded keys
    "gpt-neo-eager", "openai-gpt-eager",
])
def test_left_padded_decoders_are_exact_on_rows_no_key_is_left_to(zoo, name):
    """torch.export of the zoo's decoders with the second sequence padded on the left, rewritten at the limit."""
    graph, _ = zoo.fx_graph(name, zoo_lib.EXPORT)
    built = zoo.build(name)
    inputs = _blocked_rows(built.inputs, decoder=True)
    result = attnopt.rewrite(graph, "segmented", segment_size=SEGMENT, example_inputs=built.inputs)
    report = attnopt.validate(graph, result.model, example_inputs=inputs)
    assert report.is_exact(1e-5), report.to_dict()


def test_gpt1_exported_at_dynamic_lengths_builds_no_nxm_mask_and_is_exact(zoo):
    """At dynamic lengths GPT-1's causal table is sliced at run time, so its blend s·b − 1e4·(1 − b) is no
    constant: mask analysis proves it causal, the op takes the causal flag, and no N×M mask is left; rows the
    left padding blocks still get the original's mean of the later unpadded keys."""
    built = zoo.build("openai-gpt-eager")
    dims = ({0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO},) * len(built.inputs)
    graph = torch.export.export(built.module.eval(), built.inputs, dynamic_shapes=dims)
    (site, _) = attnopt.detect(graph)
    assert site.causal and not site.masks and site.blocked_groups == (("future_kept",), ("past", "future")), site
    result = attnopt.rewrite(graph, "segmented", segment_size=SEGMENT)
    assert not _nm_nodes_fx(result.model, built.inputs, SEQ)
    for inputs in (built.inputs, _blocked_rows(built.inputs, decoder=True)):
        report = attnopt.validate(graph, result.model, example_inputs=inputs)
        assert report.is_exact(1e-5), report.to_dict()


@pytest.mark.parametrize("exporter", [zoo_lib.TORCHSCRIPT, zoo_lib.DYNAMO])
@pytest.mark.parametrize("name", ["gpt-neo-eager", "openai-gpt-eager", "inkling-eager"])
def test_two_masked_decoders_onnx_rewrites_are_exact_on_rows_no_key_is_left_to(zoo, name, exporter, tmp_path):
    """The same rows of GPT-Neo, GPT-1 and Inkling (a bias beside the mask) through both ONNX exporters: the ONNX
    correction's running sums."""
    path = zoo.onnx_path(name, exporter)
    built = zoo.build(name)
    out = tmp_path / "rewritten.onnx"
    attnopt.rewrite(path, "segmented", segment_size=SEGMENT).save(out)
    names = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
    inputs = {n: t.numpy() for n, t in zip(names, _blocked_rows(built.inputs, decoder=True))}
    report = attnopt.validate(path, out, inputs=inputs)
    assert report.is_exact(1e-5), report.to_dict()


@pytest.mark.parametrize("name", ["llama-gqa-eager", "gpt-neo-eager"])  # the mean of every key; of key classes
def test_the_blocked_rows_correction_compiles_without_a_graph_break(zoo, name):
    """The fx correction (fx_rewrite.mean_where_blocked) is plain torch: torch.compile takes the rewritten module
    whole and computes what it computes eagerly."""
    graph, _ = zoo.fx_graph(name, zoo_lib.EXPORT)
    built = zoo.build(name)
    result = attnopt.rewrite(graph, "segmented", segment_size=SEGMENT, example_inputs=built.inputs)
    assert sum("mean_where_blocked" in str(n.target) for n in result.model.graph.nodes) == 2
    inputs = _blocked_rows(built.inputs, decoder=True)
    with torch.no_grad():
        want = result.model(*inputs)[0]
        got = torch.compile(result.model, fullgraph=True, backend="aot_eager")(*inputs)[0]
    torch.testing.assert_close(got, want, atol=0, rtol=0)


@pytest.mark.parametrize("form", ["fx-static", "fx-dynamic", "onnx-torchscript", "onnx-dynamo"])
def test_rows_whose_window_holds_only_padding_get_the_mean_of_the_values(form, tmp_path):
    """The last query of row 1 sees three padded keys in its window of 3: the model's finfo.min fill makes that
    row uniform over every key. window 3 and segments of 3, which replace the term by causality and padding,
    give it the mean of the values after the op, as the original does (lowering.blocked_rows)."""
    x, pad = _rule_inputs()  # row 1's last 3 keys padded
    model = RuleMasked("window").eval()
    with torch.no_grad():
        want = model(x, pad)[0]
        _, _, v = model.qkv(x).view(2, SEQ, 3, 2, 8).permute(2, 0, 3, 1, 4).unbind(0)
    torch.testing.assert_close(want[1, -1], v[1].mean(1).reshape(16))  # the premise: that row is uniform
    if form.startswith("fx"):
        source = _rule_export("window", form == "fx-dynamic")
    elif form == "onnx-dynamo":
        source = str(tmp_path / "w.onnx")
        with zoo_lib.quiet():
            torch.onnx.export(model, _rule_inputs(), source, dynamo=True, input_names=["x", "attention_mask"])
    else:
        source = str(_rule_onnx("window", tmp_path / "w.onnx"))
    for variant, params in (("window", {"window": 3}), ("segmented", {"segment_size": 3})):
        result = attnopt.rewrite(source, variant, **params)
        if form.startswith("fx"):
            got = result.model(x, pad)[0]
        else:
            out = tmp_path / f"{variant}.onnx"
            result.save(out)
            got = torch.from_numpy(ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
                None, {"x": x.numpy(), "attention_mask": pad.numpy()})[0])
        if variant == "window":  # window 3 is the model's own: exact everywhere
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[1, -1], want[1, -1], atol=1e-5, rtol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not _cuda_ep(), reason="needs a GPU and onnxruntime-gpu")
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_the_blocked_rows_correction_runs_on_the_cuda_provider(exporter, tmp_path):
    """The correction's nodes (counts of kept keys, the mean of the values, a Where over the output) on
    onnxruntime's CUDA provider: the same output as on the CPU provider, the padded row the mean of the values,
    and none of its value-sized nodes (ReduceSum over V, the Expand and Where over the output) left on the CPU."""
    from attnopt.ort_runtime import placement

    x, pad = _rule_inputs()
    model = RuleMasked("window").eval()
    with torch.no_grad():
        want = model(x, pad)[0].numpy()
    source = tmp_path / "w.onnx"
    if exporter == "dynamo":
        with zoo_lib.quiet():
            torch.onnx.export(model, _rule_inputs(), str(source), dynamo=True, input_names=["x", "attention_mask"])
    else:
        _rule_onnx("window", source)
    out = tmp_path / "segmented.onnx"
    attnopt.rewrite(str(source), "segmented", segment_size=3).save(out)
    feeds = {"x": x.numpy(), "attention_mask": pad.numpy()}
    cpu, cuda = (ort.InferenceSession(str(out), providers=[p]).run(None, feeds)[0]
                 for p in ("CPUExecutionProvider", ("CUDAExecutionProvider", {"use_tf32": "0"})))
    np.testing.assert_allclose(cuda, cpu, atol=1e-5, rtol=0)
    np.testing.assert_allclose(cuda[1, -1], want[1, -1], atol=1e-5, rtol=1e-5)
    where = placement(str(out), feeds, "cuda")
    print(exporter, json.dumps({k: where[k] for k in ("nodes", "cpu_nodes", "cpu_ops", "memcpy_inputs")}))
    assert not {"ReduceSum", "Expand", "Where"} & set(where["cpu_ops"]), where["cpu_ops"]


def test_a_sliding_window_term_stays_where_any_head_group_reaches_past_it():
    """Head 0 dense, head 1 windowed by 3: the dense group sees every earlier key, so both calls keep the term
    (one mask for the site), and each head equals its own kernel's spec under the site's window."""
    from attnopt.kernels.reference import dense_attention
    from attnopt.kernels.window.reference import reference as window_reference
    from attnopt.passes.base import AttentionPass, HeadGroup, OpCall
    from attnopt.pipeline import Pipeline

    class DenseThenWindow(AttentionPass):
        variant = "window"

        def plan_site(self, site):
            return OpCall(site, (HeadGroup("dense", {}, 0, 1), HeadGroup("window", {"window": 3, "sinks": 0}, 1, None)))

    x, pad = _rule_inputs()
    pad[1] = 1
    pad[1, -1] = 0  # every query keeps a key in its window
    model = RuleMasked("window").eval()
    result = Pipeline().add(DenseThenWindow()).run(_rule_export("window", True))
    ops = [n for n in result.model.graph.nodes if "attnopt" in str(n.target)]
    assert len(ops) == 2 and all(op.args[3] is not None for op in ops)
    q, k, v = model.qkv(x).view(2, SEQ, 3, 2, 8).permute(2, 0, 3, 1, 4).unbind(0)
    i, j = torch.arange(SEQ)[:, None], torch.arange(SEQ)[None, :]
    kw = dict(scale=8 ** -0.5, mask=torch.where(j > i - 3, 0.0, float("-inf"))[None, None],
              key_padding=torch.where(pad != 0, 0.0, float("-inf")), causal=True)
    with torch.no_grad():
        want = torch.cat([dense_attention(q[:, :1], k[:, :1], v[:, :1], **kw),
                          window_reference(q[:, 1:], k[:, 1:], v[:, 1:], window=3, **kw)], dim=1)
        torch.testing.assert_close(result.model(x, pad)[0], want.transpose(1, 2).reshape(2, SEQ, 16),
                                   atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- rewrite: no N×M left, still exact

def _nm_values_onnx(path, n: int) -> list[str]:
    """Values of the main graph (after shape inference) with two dims equal to ``n``, and N×M initializers."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)), data_prop=True)
    g = model.graph
    found = []
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        if dims.count(n) >= 2:
            found.append(f"{vi.name} {dims}")
    for init in g.initializer:
        if list(init.dims).count(n) >= 2:
            found.append(f"initializer {init.name} {list(init.dims)}")
    return found


@pytest.mark.zoo(select=_static_decoder)
def test_onnx_decoder_rewrite_reads_no_nxm_mask_and_is_exact(zoo_onnx_case, zoo, tmp_path):
    path = zoo_onnx_case.path
    assert _nm_values_onnx(path, SEQ), "the check must see the original's N×M values"
    result = attnopt.rewrite(path, "segmented", segment_size=SEGMENT)
    assert len(result.rewritten) == zoo_onnx_case.case.expected_sites, result.to_dict()
    out = tmp_path / "rewritten.onnx"
    result.save(out)
    built = zoo.build(zoo_onnx_case.case.name)
    assert (built.inputs[1] == 0).any(), "the inputs must pad some keys"
    if zoo.ort_runs(zoo_onnx_case.case.name, zoo_onnx_case.exporter):
        names = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
        inputs = {name: t.numpy() for name, t in zip(names, built.inputs)}
        report = attnopt.validate(path, out, inputs=inputs)
        assert report.is_exact(1e-5), report.to_dict()
    left = _nm_values_onnx(out, SEQ)
    assert not left, f"{zoo_onnx_case.id}: N×M values after the rewrite:\n" + "\n".join(left)


def _nm_nodes_fx(gm, inputs, n: int) -> list[str]:
    from torch.fx.passes.shape_prop import ShapeProp

    with torch.no_grad():
        ShapeProp(gm).propagate(*inputs)
    found = []
    for node in gm.graph.nodes:
        tm = node.meta.get("tensor_meta")
        shape = list(getattr(tm, "shape", []) or [])
        if [int(d) for d in shape].count(n) >= 2:
            found.append(f"{node.name} {node.target} {list(shape)}")
    return found


@pytest.mark.zoo(select=_static_decoder)
def test_fx_decoder_rewrite_reads_no_nxm_mask_and_is_exact(zoo_fx_case):
    result = attnopt.rewrite(zoo_fx_case.graph, "segmented", segment_size=SEGMENT,
                             example_inputs=zoo_fx_case.example_inputs)
    assert len(result.rewritten) == zoo_fx_case.case.expected_sites, result.to_dict()
    inputs = zoo_fx_case.inputs
    assert (inputs[1] == 0).any(), "the inputs must pad some keys"
    report = attnopt.validate(zoo_fx_case.graph, result.model, example_inputs=inputs)
    assert report.is_exact(1e-5), report.to_dict()
    left = _nm_nodes_fx(result.model, inputs, SEQ)
    assert not left, f"{zoo_fx_case.id}: N×M values after the rewrite:\n" + "\n".join(left)


# ----------------------------------------------------------------------------- rows no key is left to

def _blocked_rows(inputs, decoder: bool):
    """The case's inputs with batch row 1 padded so that some query rows keep no key at all: on the left for a
    decoder (its first queries see only padding), wholly for an encoder."""
    mask = torch.ones_like(inputs[1])
    mask[1, :3 if decoder else None] = 0
    return (inputs[0], mask, *inputs[2:])


def _static_encoder(case, how) -> bool:
    return _encoder(case, how) and not case.name.endswith("-dynamic")


@pytest.mark.zoo(select=lambda case, how: _static_decoder(case, how) or _static_encoder(case, how))
def test_onnx_rewrite_is_exact_on_rows_the_padding_blocks_entirely(zoo_onnx_case, zoo, tmp_path):
    """HF's eager masks fill blocked keys with finfo.min, which swallows the scores: a row of nothing else is
    uniform, the mean of every value (AttentionSite.blocked_rows); SDPA forms give 0, as the ops do."""
    if not zoo.ort_runs(zoo_onnx_case.case.name, zoo_onnx_case.exporter):
        pytest.skip("onnxruntime cannot run this export, before or after the rewrite: "
                    + zoo_onnx_case.case.ort_known_failures[zoo_onnx_case.exporter])
    built = zoo.build(zoo_onnx_case.case.name)
    path = zoo_onnx_case.path
    out = tmp_path / "rewritten.onnx"
    attnopt.rewrite(path, "segmented", segment_size=SEGMENT).save(out)
    names = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
    inputs = {name: t.numpy() for name, t in zip(names, _blocked_rows(built.inputs, _decoder(zoo_onnx_case.case,
                                                                                            None)))}
    report = attnopt.validate(path, out, inputs=inputs)
    assert report.is_exact(1e-5), (zoo_onnx_case.id, report.to_dict())


@pytest.mark.zoo(select=lambda case, how: _static_decoder(case, how) or _static_encoder(case, how))
def test_fx_rewrite_is_exact_on_rows_the_padding_blocks_entirely(zoo_fx_case):
    result = attnopt.rewrite(zoo_fx_case.graph, "segmented", segment_size=SEGMENT,
                             example_inputs=zoo_fx_case.example_inputs)
    inputs = _blocked_rows(zoo_fx_case.inputs, _decoder(zoo_fx_case.case, None))
    report = attnopt.validate(zoo_fx_case.graph, result.model, example_inputs=inputs)
    assert report.is_exact(1e-5), (zoo_fx_case.id, report.to_dict())


def _cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_a_constant_the_view_cannot_size_is_no_length():
    """SEW-D's dynamo export feeds a mask from a ConstantOfShape whose shape the view does not know; reading it
    as a candidate length raised a numpy TypeError out of ``attnopt.detect``."""
    from attnopt.graph import ValueRef

    class UnsizedConstant:
        def shape(self, ref):
            return (None,)

        def dtype(self, ref):
            return "int64"

        def const(self, ref):
            return np.array([7])

    assert mask_analysis._int_extent(UnsizedConstant(), ValueRef("n", 0)) == 0
