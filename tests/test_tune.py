"""attnopt tune: per-site (and per-head-group) plans within a cosine budget, the plan file, `rewrite --plan`.

On the small built-in example (2 layers, 4 heads, N = 32; random weights, so
attention is spread wide and local variants cost real error): budget 1.0 gives
an exact plan, a loose budget a cheaper plan than a tight one, and each plan's
measured end-to-end cosine is checked again here, independently of the tuner.
Head-group errors the tuner composes from per-head measurements must equal a
real rewrite's. Bad plans are one-line errors with exit code 2. fx and ONNX both.
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import attnopt
from attnopt.cli import main
from attnopt.examples import build_example, export_example
from attnopt.plan import Plan, PlanError, PlanGroup, SitePlan, apply_plan
from attnopt.tune import mix_error, output_cosine

N = 32
VARIANTS = ("segmented",)  # one variant keeps the sweep at a few runs; the search is the same


@pytest.fixture(scope="module")
def fx_model():
    module, inputs, _ = build_example("bert", seq_len=N, batch=2)
    return torch.export.export(module, inputs), inputs


@pytest.fixture(scope="module")
def tuned(fx_model):
    ep, _ = fx_model
    exact = attnopt.tune(ep, 1.0, variants=VARIANTS)
    # The other budgets search again on the same measured candidates (no second sweep).
    return {1.0: exact, 0.9: exact.retune(0.9), 0.5: exact.retune(0.5)}


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    return export_example("bert", tmp_path_factory.mktemp("tune") / "bert.onnx", seq_len=N)


def run_fx(model, inputs):
    with torch.no_grad():
        out = model(*inputs)
    return {"y": out}


def test_budget_one_is_exact(fx_model, tuned):
    ep, inputs = fx_model
    result = tuned[1.0]
    assert all(s.is_dense or s.rel_l2 <= 1e-6 for s in result.plan.sites)
    assert result.cost_vs_dense == 1.0 and result.end_to_end == 1.0
    rewritten = attnopt.rewrite(ep, plan=result.plan)
    assert torch.equal(run_fx(rewritten.model, inputs)["y"], run_fx(ep.module(), inputs)["y"])


def test_loose_budget_is_cheaper_and_holds(fx_model, tuned):
    ep, inputs = fx_model
    tight, loose = tuned[0.9], tuned[0.5]
    assert loose.cost_vs_dense < tight.cost_vs_dense < 1.0  # both rewrite something; the loose one more
    assert loose.attended_fraction < 1.0 and loose.plan.sites
    dense = run_fx(ep.module(), inputs)
    for budget, result in ((0.9, tight), (0.5, loose)):
        assert result.end_to_end >= budget
        # The tuner's end-to-end claim, checked again through a fresh rewrite of the saved plan.
        measured = output_cosine(dense, run_fx(attnopt.rewrite(ep, plan=result.plan).model, inputs), {})
        assert measured == pytest.approx(result.end_to_end, abs=1e-6)
        for site in result.plan.sites:
            assert site.cosine >= budget - 1e-9  # each site within the budget too
            assert 0 < site.attended_fraction < 1


def test_holdout_is_the_plan_measured_on_other_inputs(fx_model):
    """``holdout=``: the plan's end-to-end cosine on inputs the tuner did not see, as a fresh rewrite measures
    it there; the calibration inputs themselves as holdout give the calibration figures; retune measures its
    own plan; exact plans hold 1.0."""
    ep, inputs = fx_model
    ids, mask = inputs
    other = (torch.randint(0, 100, ids.shape, generator=torch.Generator().manual_seed(7)), mask)
    result = attnopt.tune(ep, 0.5, variants=VARIANTS, holdout=other)
    held = result.holdout
    assert result.plan.sites and result.to_dict()["holdout"] == held.to_dict()
    fresh = output_cosine(run_fx(ep.module(), other), run_fx(attnopt.rewrite(ep, plan=result.plan).model, other), {})
    assert held.end_to_end == pytest.approx(fresh, abs=1e-6)
    assert held.end_to_end != pytest.approx(result.end_to_end, abs=1e-6)  # other inputs, another figure
    assert held.attended_fraction == pytest.approx(result.attended_fraction)  # fixed patterns, same length
    same = result.check(inputs)
    assert (same.end_to_end, same.attended_fraction) == pytest.approx((result.end_to_end, result.attended_fraction))
    assert result.retune(1.0).holdout.end_to_end == 1.0
    assert attnopt.tune(ep, 0.5, variants=VARIANTS).holdout is None


def test_head_group_errors_compose_exactly(fx_model, tuned):
    """Heads are independent: the error of a mixed plan (half the heads dense) follows from per-head
    measurements, and a real head-group rewrite measures the same."""
    ep, _ = fx_model
    info = tuned[0.5].sites[0]
    seg = next(c for c in info.candidates if c.candidate.kernel == "segmented" and not c.error)
    dense = info.candidates[0]
    predicted_rel, predicted_cos = mix_error(info, [dense, dense, seg, seg])
    assert 0 < predicted_rel < seg.rel_l2  # half the heads exact: less error than all through segmented
    plan = Plan(tuned[0.5].plan.fingerprint, tuned[0.5].plan.model_sites, [SitePlan(info.name, (
        PlanGroup(0, 2, "dense"), PlanGroup(2, 4, "segmented", seg.candidate.param_dict)))])
    rewritten = attnopt.rewrite(ep, plan=plan)
    assert [o.status for o in rewritten.report] == ["rewritten", "refused"]
    report = attnopt.validate(ep, rewritten, sites=[info.name])
    assert report.sites[0].rel_l2 == pytest.approx(predicted_rel, rel=1e-4)
    assert report.sites[0].cosine == pytest.approx(predicted_cos, abs=1e-6)


def test_plan_round_trips_through_the_file(fx_model, tuned, tmp_path):
    ep, inputs = fx_model
    plan = tuned[0.5].plan
    path = plan.save(tmp_path / "plan.json")
    again = Plan.load(path)
    assert again.to_dict() == plan.to_dict()
    assert json.loads(path.read_text())["version"] == 1
    a = run_fx(apply_plan(ep, plan).model, inputs)["y"]
    b = run_fx(attnopt.rewrite(ep, plan=str(path)).model, inputs)["y"]
    assert torch.equal(a, b)


def test_plan_errors_in_python(fx_model, tuned):
    ep, _ = fx_model
    plan = tuned[0.5].plan.to_dict()
    with pytest.raises(PlanError, match="version 7"):
        Plan.from_dict({**plan, "version": 7})
    other = json.loads(json.dumps(plan))
    other["sites"][0]["name"] = "no.such.site"
    with pytest.raises(PlanError, match="has no site 'no.such.site'"):
        apply_plan(ep, Plan.from_dict(other))
    with pytest.raises(attnopt.AttnoptError, match="plan takes no pass"):
        attnopt.rewrite(ep, "segmented", plan=Plan.from_dict(plan))


# ----------------------------------------------------------------------------- the CLI, on ONNX

def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result, contains: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.stderr
    assert contains in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def onnx_plan(onnx_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("tuned")
    res = cli("tune", onnx_model, "--budget", "0.5", "--seq-len", N, "--variants", ",".join(VARIANTS),
              "-o", d / "plan.json", "--plot", d / "tune.png", "--json")
    assert res.exit_code == 0, res.output
    return d, json.loads(res.stdout)


def test_cli_tune_then_rewrite_by_plan(onnx_model, onnx_plan):
    d, report = onnx_plan
    assert (d / "plan.json").exists() and (d / "tune.png").stat().st_size > 0
    assert report["end_to_end"] >= 0.5 and report["cost_vs_dense"] < 1.0
    assert {c["kernel"] for c in report["candidates"]} == {"dense", "segmented"}
    res = cli("rewrite", onnx_model, "--plan", d / "plan.json", "-o", d / "tuned.onnx", "--json")
    assert res.exit_code == 0, res.output
    planned = {s["name"] for s in report["plan"]["sites"]}
    assert {s["site"] for s in json.loads(res.stdout)["sites"] if s["status"] == "rewritten"} == planned
    check = attnopt.validate(onnx_model, d / "tuned.onnx", seq_len=N)
    assert check.outputs[0].cosine >= 0.5


def test_cli_holdout(onnx_model, tmp_path):
    """--holdout: its cosine in the JSON and the table; a bad file is a one-line error before any tuning."""
    import numpy as np
    import onnx_ir as ir

    from attnopt.inputs import onnx_inputs

    held = tmp_path / "held.npz"
    np.savez(held, **onnx_inputs(ir.load(onnx_model), None, N, batch=2, seed=11))
    args = ["tune", onnx_model, "--budget", "0.5", "--seq-len", N, "--variants", ",".join(VARIANTS),
            "-o", tmp_path / "plan.json"]
    res = cli(*args, "--holdout", held, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert 0.0 < report["holdout"]["end_to_end"] <= 1.0 and report["holdout_inputs"] == str(held)
    assert report["holdout"]["attended_fraction"] == pytest.approx(report["attended_fraction"])
    res = cli(*args, "--holdout", held)
    line = f"held-out inputs ({held}): end-to-end cosine {report['holdout']['end_to_end']:.4f}"
    assert res.exit_code == 0 and line in res.stdout.replace("\n", " ")
    np.savez(tmp_path / "bad.npz", nonsense=np.zeros(3))
    one_line_error(cli(*args, "--holdout", tmp_path / "bad.npz"), "input")
    one_line_error(cli(*args, "--holdout", tmp_path / "missing.npz"), "no such file")


def test_cli_bad_plans(onnx_model, onnx_plan, tmp_path):
    d, _ = onnx_plan
    plan = json.loads((d / "plan.json").read_text())

    def write(name, text):
        p = tmp_path / name
        p.write_text(text if isinstance(text, str) else json.dumps(text))
        return p

    out = tmp_path / "o.onnx"
    one_line_error(cli("rewrite", onnx_model, "--plan", write("a.json", "{not json"), "-o", out), "not a JSON plan")
    one_line_error(cli("rewrite", onnx_model, "--plan", write("b.json", {**plan, "version": 2}), "-o", out),
                   "version 2 is not supported")
    unknown = json.loads(json.dumps(plan))
    unknown["sites"][0]["name"] = "layer.9.attention"
    one_line_error(cli("rewrite", onnx_model, "--plan", write("c.json", unknown), "-o", out),
                   "has no site 'layer.9.attention'")
    bad_param = json.loads(json.dumps(plan))
    bad_param["sites"][0]["groups"][0]["params"]["segment_size"] = 0
    one_line_error(cli("rewrite", onnx_model, "--plan", write("d.json", bad_param), "-o", out), "segment_size")
    one_line_error(cli("rewrite", onnx_model, "--plan", d / "plan.json", "--pass", "segmented", "-o", out),
                   "mutually exclusive")
    one_line_error(cli("rewrite", onnx_model, "--plan", tmp_path / "missing.json", "-o", out), "no such plan file")
    two_heads = export_example("bert", tmp_path / "bert2.onnx", seq_len=N, heads=2)
    one_line_error(cli("rewrite", two_heads, "--plan", d / "plan.json", "-o", out),
                   "made for another model: site 'layer.0.attention': num_heads is 4 in the plan, 2 in the model")
    one_line_error(cli("tune", onnx_model, "--budget", "1.5"), "--budget must be a cosine")
    one_line_error(cli("tune", onnx_model, "--budget", "0.9", "--variants", "lsh"), "not a tunable variant")
    assert not out.exists()


# ----------------------------------------------------------------------------- routed: its cost measured on the data

ROUTED_N = 64  # routed's grid wants clusters of 8 keys or more on average


@pytest.fixture(scope="module")
def routed_tuned():
    module, inputs, _ = build_example("bert", seq_len=ROUTED_N, batch=2)
    ep = torch.export.export(module, inputs)
    return ep, attnopt.tune(ep, 0.5, variants=("routed",))


def test_measured_fraction_is_the_specs_allowed_set():
    from attnopt.attended import attended_fraction, measured_fraction
    from attnopt.kernels.routed.reference import allowed_keys

    torch.manual_seed(0)
    q, k = torch.randn(3, 4, 48, 8), torch.randn(3, 2, 48, 8)
    params = dict(n_clusters=4, top_k=2, iters=2, seed=0, chunk=8, sinks=2)
    allowed = allowed_keys(q, k, **params)
    for causal in (False, True):
        visible = torch.ones(48, 48, dtype=torch.bool)
        visible = visible.tril() if causal else visible
        expected = (allowed & visible).float().mean(dim=(0, 2, 3))
        got = measured_fraction("routed", params, q, k, causal)
        assert torch.allclose(got, expected) and 0 < got.min() and got.max() < 1
    assert torch.equal(measured_fraction("routed", {**params, "n_clusters": 1}, q, k, False), torch.ones(4))
    with pytest.raises(ValueError, match="measured_fraction"):
        attended_fraction("routed", params, 48, 48, False)


def test_routed_cost_is_what_the_op_routes(routed_tuned, monkeypatch):
    """The tuner reads each site's q and k off the dense run and routes them itself; the op, run on the same
    calibration feeds, must route to the same keys, head by head."""
    import attnopt.kernels.routed.op as routed_op
    from attnopt.kernels.buckets import buckets_allowed
    from attnopt.kernels.reference import with_sinks
    from attnopt.tune import _bare_plan

    _, result = routed_tuned
    ev, seen, real = result._evaluator, [], routed_op.route
    checked = 0
    for info in result.sites:
        for cand in [c for c in info.candidates if c.candidate.kernel == "routed"]:
            p = cand.candidate.param_dict
            assert not cand.error and cand.unit_fraction.shape == (info.units,)

            def recording(q, k, key_padding, **kw):
                qb, kb = real(q, k, key_padding, **kw)
                seen.append(with_sinks(buckets_allowed(qb, kb, p["chunk"]), p["sinks"]).float().mean(dim=(0, 2, 3)))
                return qb, kb

            monkeypatch.setattr(routed_op, "route", recording)
            seen.clear()
            group = PlanGroup(0, info.site.num_heads, "routed", p)
            ev.run_plan(_bare_plan(ev, {info.name: SitePlan(info.name, (group,))}))
            assert len(seen) == 1
            op_units = seen[0].reshape(info.units, -1).mean(1).double().numpy()
            assert op_units == pytest.approx(cand.unit_fraction, abs=1e-6)
            checked += 1
    assert checked >= 2
    # The plan's fractions are the chosen candidates' per-head ones.
    for sp in result.plan.sites:
        info = next(s for s in result.sites if s.name == sp.name)
        for g in sp.groups:
            if g.kernel == "routed":
                cand = next(c for c in info.candidates if c.candidate.kernel == "routed"
                            and c.candidate.param_dict == g.params)
                assert g.attended_fraction == pytest.approx(float(cand.unit_fraction[g.start:g.stop].mean()))


def test_routed_keys_are_measured_again_on_other_inputs(routed_tuned):
    """``check``: on the calibration inputs the plan's attended fraction is the tuner's own (another code path,
    plan groups instead of candidates); on other inputs routed routes other keys, so the fraction moves."""
    ep, result = routed_tuned
    assert any(g.kernel == "routed" for s in result.plan.sites for g in s.groups)
    ev = result._evaluator
    ids, mask = (ev.feeds[name] for name in ("input_ids", "attention_mask"))
    same = result.check((ids, mask))
    assert same.attended_fraction == pytest.approx(result.attended_fraction, abs=1e-9)
    other = result.check((torch.randint(0, 100, ids.shape, generator=torch.Generator().manual_seed(3)), mask))
    assert 0 < other.attended_fraction < 1 and other.attended_fraction != pytest.approx(same.attended_fraction,
                                                                                         abs=1e-6)


def test_routed_is_measured_on_onnx_too(onnx_model, routed_tuned):
    """ONNX exports hand the site k in (b, s, h, d): read as the rewrite reads it, the same weights and feeds
    give the fx tuner's per-head fractions (which the test above holds to the op's own routing)."""
    import numpy as np

    path = export_example("bert", onnx_model.parent / "bert64.onnx", seq_len=ROUTED_N)
    on_onnx = attnopt.tune(str(path), 0.5, variants=("routed",), seq_len=ROUTED_N)
    feeds = {name: np.asarray(v) for name, v in on_onnx._evaluator.feeds.items()}
    on_fx = attnopt.tune(routed_tuned[0], 0.5, variants=("routed",), inputs=feeds)
    pairs = [(a, b) for a, b in zip(on_onnx.candidates, on_fx.candidates) if a.candidate.kernel == "routed"]
    assert len(pairs) >= 2 and all(a.candidate == b.candidate and a.site == b.site for a, b in pairs)
    for a, b in pairs:
        assert not a.error, a.error
        assert a.unit_fraction == pytest.approx(b.unit_fraction, abs=1e-4)
