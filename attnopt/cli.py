"""The `attnopt` command line: parse, call the public API in attnopt/__init__.py, print.

Every user error surfaces as one line, ``error: <message>``, on stderr and exit
code 2. A bug gets one line too, with exit code 1; ATTNOPT_DEBUG=1 shows its
traceback instead.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import click

from .errors import AttnoptError, one_line
from .tune import TUNABLE

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _debug() -> bool:
    return os.environ.get("ATTNOPT_DEBUG", "") not in ("", "0")


def _fail(message: str, code: int = EXIT_USER_ERROR) -> int:
    click.echo(f"error: {one_line(message, limit=None) or '(no message)'}", err=True)
    return code


class AttnoptGroup(click.Group):
    """A click group whose every failure is one line on stderr: no usage dump, no traceback."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        code = self._run(args, prog_name, complete_var, **extra)
        if standalone_mode:
            sys.exit(code)
        return code

    def _run(self, args, prog_name, complete_var, **extra) -> int:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            return rv if isinstance(rv, int) else 0  # click returns Exit's code (e.g. --help) as rv
        except AttnoptError as e:
            if _debug():
                raise
            return _fail(str(e))
        except click.ClickException as e:
            where = f" (see '{e.ctx.command_path} --help')" if getattr(e, "ctx", None) is not None else ""
            return _fail(e.format_message() + where, e.exit_code)
        except (click.Abort, KeyboardInterrupt):
            return _fail("interrupted", 130)
        except BrokenPipeError:  # `attnopt detect --json m.onnx | head`
            return 0
        except OSError as e:  # unreadable input, unwritable output, disk full: the user's to fix
            if _debug():
                raise
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            return _fail(f"{where}{e.strerror or e}")
        except Exception as e:  # noqa: BLE001 - the boundary: a bug still gets one line, not a traceback
            if _debug():
                raise
            return _fail(f"internal error: {type(e).__name__}: {one_line(e)} "
                         "(rerun with ATTNOPT_DEBUG=1 for the traceback)", EXIT_INTERNAL_ERROR)


# ----------------------------------------------------------------------------- output helpers

def _console(stderr: bool = False):
    from rich.console import Console
    # A pipe or CliRunner reports 80 columns; tables of nine columns then wrap every cell.
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 140
    # markup=False: model paths and reasons are printed as they are, '[' and all.
    return Console(stderr=stderr, width=width, highlight=False, soft_wrap=False, markup=False)


def _print_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=_json_default))


def _json_default(o):
    try:
        import numpy as np
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    return str(o)


def _table(title: str, columns: list[str], rows: list[list], caption: str | None = None):
    from rich.table import Table
    t = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*[_cell(x) for x in r])
    return t


def _cell(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _quiet_libraries() -> None:
    """Library warnings would break the one-line-error promise and clutter tables."""
    if _debug():
        return
    warnings.filterwarnings("ignore")
    try:
        import onnxruntime
        onnxruntime.set_default_logger_severity(3)
    except Exception:  # noqa: BLE001 - onnxruntime is optional for detect
        pass


def _parse_params(items: tuple[str, ...]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise AttnoptError(f"-p {item!r}: expected key=value, e.g. -p segment_size=512")
        if key in params:
            raise AttnoptError(f"-p {key} is given twice")
        params[key] = value
    return params


def _parse_seq_lens(spec: str) -> list[int]:
    try:
        out = [int(x) for x in spec.replace(" ", "").split(",") if x]
    except ValueError:
        raise AttnoptError(f"--seq-len {spec!r}: expected comma-separated integers, e.g. 512,1024,2048") from None
    if not out or any(n < 1 for n in out):
        raise AttnoptError(f"--seq-len {spec!r}: expected positive integers, e.g. 512,1024,2048")
    return out


def _default_output(model: str, pass_name: str) -> Path:
    p = Path(model)
    stem = p.name[: -len(".onnx")] if p.name.endswith(".onnx") else p.name
    return p.with_name(f"{stem}.{pass_name}.onnx")


def _check_writable(path: Path, model: str | None = None) -> None:
    if path.is_dir():
        raise AttnoptError(f"{path}: is a directory")
    if model is not None and Path(model).exists() and path.exists() and path.resolve() == Path(model).resolve():
        raise AttnoptError(f"{path}: the output would overwrite the input model; pick another -o")


def _require_file(path: str, what: str = "model") -> None:
    # The frontends say this too; checking here first keeps validate/bench errors identical.
    p = Path(path)
    if not p.exists():
        raise AttnoptError(f"{path}: no such file")
    if p.is_dir():
        raise AttnoptError(f"{path}: is a directory, not an ONNX {what}")


# ----------------------------------------------------------------------------- commands

@click.group(cls=AttnoptGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="attnopt", message="attnopt %(version)s")
def main():
    """attnopt: find dense attention in a model and rewrite it into a long-sequence variant.

    Works on ONNX files from any exporter (torch dynamo, TorchScript, onnxscript
    fusions); the python API also takes torch.fx graphs. Start with `attnopt demo`.

    \b
    Example:
      attnopt example bert -o bert.onnx
      attnopt detect bert.onnx
      attnopt rewrite bert.onnx --pass segmented -p segment_size=512 -p sinks=4
      attnopt validate bert.onnx bert.segmented.onnx --seq-len 1024
      attnopt bench bert.onnx --pass segmented -p segment_size=256 --seq-len 512,1024,2048
    """
    _quiet_libraries()


@main.command()
@click.argument("model")
@click.option("-v", "--verbose", is_flag=True,
              help="Also list every softmax or fused attention op that is not a site, with the reason.")
@click.option("--json", "as_json", is_flag=True,
              help="Print {\"model\": ..., \"sites\": [...], \"skipped\": [...]} to stdout, nothing else.")
def detect(model, verbose, as_json):
    """List every attention site in an ONNX MODEL.

    One row per site: its name (from the module path), the pattern that matched
    (decomposed matmul/softmax, fused Attention, ...), heads ("2 (+1 axis)" where
    the attention is also batched over an axis after the heads, as Hiera's mask
    units), kv heads, head dim ("192 (v 128)" where the values have their own,
    as DeepSeek's MLA; "6+12" where the scores add two q·kᵀ products, as LiLT's
    text and layout streams, which the rewrite concatenates), scale,
    mask kind and causality. A site the rewriter cannot serve says why in
    the note column. A model with no attention prints "no attention sites found",
    with how many softmaxes were looked at and left (-v lists each with the
    reason), and exits 0.

    \b
    Example:
      attnopt detect bert.onnx
      attnopt detect bert.onnx --json | jq '.sites[].name'
    """
    from .loaded import open_model
    from .match import detect as match
    loaded = open_model(model)
    sites = loaded.sites  # with their masks in structured form
    skipped = match(loaded.view).skipped
    if as_json:
        _print_json({"model": model, "sites": [s.summary() for s in sites], "skipped": [k.summary() for k in skipped]})
        return
    if verbose and skipped:
        rows = [[k.name, k.op, k.reason + (" (matcher error)" if k.internal_error else "")] for k in skipped]
        _console().print(_table("not attention sites", ["anchor", "op", "why"], rows))
    if not sites:
        hint = "" if verbose or not skipped else \
            f" ({len(skipped)} softmax{'es' * (len(skipped) != 1)} looked at and left; -v says why)"
        click.echo("no attention sites found" + hint)
        return
    rows = []
    for s in sites:
        d = s.summary()
        head_dim = "+".join(map(str, d["score_parts"])) if "score_parts" in d else d["head_dim"]
        head_dim = head_dim if "value_head_dim" not in d else f"{head_dim} (v {d['value_head_dim']})"
        heads = d["num_heads"] if "extra_axes" not in d else \
            f"{d['num_heads']} (+{d['extra_axes']} axis{'es' * (d['extra_axes'] > 1)})"
        rows.append([d["name"], d["form"], heads, d["kv_num_heads"], head_dim,
                     _lens(d.get("q_len"), d.get("kv_len")),
                     f"{d['scale']:.4g} × per head" if d["per_head_scale"] else d["scale"], _mask_text(d), d["causal"],
                     s.unsupported or ""])
    _console().print(_table(f"{model}: {len(sites)} attention site{'s' * (len(sites) != 1)}",
                            ["name", "form", "heads", "kv heads", "head dim", "q × kv len", "scale",
                             "mask", "causal", "note"], rows))


def _mask_text(summary: dict) -> str:
    """Key padding (a (B, M) vector) and the dense remainder's kinds, as a site summary states them."""
    parts = []
    if summary.get("key_padding"):
        parts.append(f"key padding ({summary['key_padding']})")
    if summary.get("mask_kind"):
        parts.append(summary["mask_kind"] + (f" (sliding window {summary['window']})" if summary.get("window") else ""))
    if summary.get("sink_logits"):
        parts.append("sink logits")
    return " + ".join(parts) or "-"


def _lens(q, kv) -> str:
    if q is None and kv is None:
        return "-"
    return f"{q if q is not None else '?'} × {kv if kv is not None else '?'}"


@main.command()
@click.argument("model")
@click.option("--pass", "pass_name", metavar="NAME",
              help="The variant to rewrite into (see `attnopt passes`); or give --plan.")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE", help="A pass parameter; repeat for several.")
@click.option("--layers", metavar="A:B", help="Only sites in layers A..B-1 (python slice; '3' is one layer).")
@click.option("--names", multiple=True, metavar="GLOB", help="Only sites whose name matches GLOB; repeatable.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Where to write (default MODEL.<pass>.onnx).")
@click.option("--streaming", is_flag=True,
              help="Write the pass's streaming form (memory): the model takes one segment per call plus, per site, "
                   "its memory and sink keys/values as inputs, and returns them updated as outputs. Positions must "
                   "continue across calls: the model takes them as an input (position_ids) or every site's "
                   "position dependence is a recognised relative bias (ALiBi, as BLOOM builds it). Every site "
                   "streams, or the rewrite is refused.")
@click.option("--no-verify", is_flag=True,
              help="Skip checking that the output loads and runs in onnxruntime (onnx.checker, a CPU session "
                   "and one run on made-up inputs of 16 tokens) before writing it; for models where that costs "
                   "too much.")
@click.option("--target", default="portable", show_default=True, metavar="portable|ort-cuda",
              help="portable: ai.attnopt function bodies, any execution provider. ort-cuda: where a variant has "
                   "an exact com.microsoft lowering (segmented: MultiHeadAttention over segments folded into the "
                   "batch), emit it for onnxruntime's fused CUDA kernels; elsewhere the portable body, and the "
                   "table says why.")
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False), metavar="PLAN.JSON",
              help="Rewrite each site as a plan from `attnopt tune` says (instead of --pass); a plan made for "
                   "another model is refused.")
@click.option("--json", "as_json", is_flag=True, help="Print the per-site report as JSON.")
def rewrite(model, pass_name, params, layers, names, output, streaming, no_verify, target, plan_path, as_json):
    """Rewrite the attention sites of an ONNX MODEL with one pass and save the result.

    Each selected site is replaced by an ai.attnopt op whose ONNX function body
    travels inside the model, so stock onnxruntime runs it with nothing extra
    installed. Sites the pass cannot serve stay dense and the table says why.
    The output is checked first (onnx.checker, an onnxruntime CPU session and
    one run on made-up inputs; --no-verify skips that) and written atomically:
    on any error nothing is written, and the error names the site at fault.

    \b
    Example:
      attnopt rewrite bert.onnx --pass segmented -p segment_size=512 -p sinks=4
      attnopt rewrite bert.onnx --pass segmented -p segment_size=256 --layers 0:6 -o bert.seg.onnx
      attnopt rewrite bert.onnx --pass segmented --names 'encoder.layer.1*'
      attnopt rewrite bert.onnx --plan plan.json      # a plan from `attnopt tune`
    """
    import attnopt
    from .passes import pass_class
    if plan_path is not None:
        return _rewrite_by_plan(model, plan_path, pass_name, params, layers, names, output, streaming, no_verify,
                                target, as_json)
    if pass_name is None:
        raise AttnoptError("rewrite: give --pass NAME or --plan PLAN.JSON")
    parsed = _parse_params(params)
    pass_class(pass_name)(**parsed, streaming=streaming)  # bad params fail before the model is read
    from .kernels.ort_cuda import check_target
    check_target(target)
    _require_file(model)
    out = Path(output) if output else _default_output(model, pass_name)
    _check_writable(out, model)
    result = attnopt.rewrite(model, pass_name, layers=layers, names=names, streaming=streaming, target=target,
                             **parsed)
    result.save(out, verify=not no_verify)
    n_done, n_all = len(result.rewritten), len(result.report)
    if as_json:
        _print_json({**result.to_dict(), "pass": pass_name, "params": parsed, "output": str(out),
                     "rewritten": n_done})
        return
    rows = [[o.site, o.layer, o.status, (o.plan_text + _target_text(o)) if o.status == "rewritten" else o.reason]
            for o in result.report]
    con = _console()
    con.print(_table(f"{model}: {pass_name}", ["site", "layer", "status", "params / reason"], rows))
    con.print(f"wrote {out} ({n_done} of {n_all} site{'s' * (n_all != 1)} rewritten)")


def _rewrite_by_plan(model, plan_path, pass_name, params, layers, names, output, streaming, no_verify, target,
                     as_json) -> None:
    import attnopt
    from .plan import Plan
    given = [opt for opt, v in (("--pass", pass_name), ("-p", params), ("--layers", layers), ("--names", names),
                                ("--streaming", streaming)) if v]
    if given:
        raise AttnoptError(f"rewrite: --plan and {', '.join(given)} are mutually exclusive (the plan holds them)")
    plan = Plan.load(plan_path)  # a bad plan fails before the model is read
    _require_file(model)
    out = Path(output) if output else _default_output(model, "tuned")
    _check_writable(out, model)
    result = attnopt.rewrite(model, plan=plan, target=target)
    result.save(out, verify=not no_verify)
    n_done, n_all = len(result.rewritten), len(result.report)
    if as_json:
        _print_json({**result.to_dict(), "plan": plan_path, "output": str(out), "rewritten": n_done})
        return
    rows = [[o.site, o.layer, o.status, o.plan_text if o.status == "rewritten" else o.reason] for o in result.report]
    con = _console()
    con.print(_table(f"{model}: plan {plan_path}", ["site", "layer", "status", "params / reason"], rows))
    con.print(f"wrote {out} ({n_done} of {n_all} site{'s' * (n_all != 1)} rewritten by the plan)")


def _target_text(outcome) -> str:
    """What the op call compiles to under a target other than portable, or why it kept the portable body."""
    if outcome.target == "portable":
        return ""
    return f" ({outcome.fallback})" if outcome.fallback else f" ({outcome.target} lowering)"


@main.command()
@click.argument("original")
@click.argument("rewritten")
@click.option("--inputs", "inputs_path", type=click.Path(dir_okay=False), metavar="X.NPZ",
              help="Inputs to run, one array per graph input name (default: random, respecting token ranges and masks).")
@click.option("--seq-len", type=int, metavar="N", help="Sequence length of the random inputs.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def validate(original, rewritten, inputs_path, seq_len, as_json):
    """Run ORIGINAL and REWRITTEN on identical inputs and compare them.

    Reports, per graph output and per rewritten site (the rewrite keeps each
    site's output name), the max absolute error, the relative L2 error and the
    cosine similarity. The error is measured, never hidden: an approximate
    variant shows its real cost on your inputs.

    \b
    Example:
      attnopt validate bert.onnx bert.segmented.onnx --seq-len 1024
      attnopt validate bert.onnx bert.segmented.onnx --inputs batch.npz --json
    """
    import attnopt
    _require_file(original)
    _require_file(rewritten)
    if seq_len is not None and seq_len < 1:
        raise AttnoptError(f"--seq-len must be >= 1, got {seq_len}")
    report = attnopt.validate(original, rewritten, inputs=inputs_path, seq_len=seq_len)
    d = report.to_dict()
    if as_json:
        _print_json({"original": original, "rewritten": rewritten, **d})
        return
    rows = [["output", r.get("name"), r.get("max_abs"), r.get("rel_l2"), r.get("cosine")] for r in d.get("outputs", [])]
    rows += [["site", r.get("name"), r.get("max_abs"), r.get("rel_l2"), r.get("cosine")] for r in d.get("sites", [])]
    _console().print(_table(f"{rewritten} vs {original}", ["", "name", "max abs", "rel L2", "cosine"], rows))
    if report.note:
        _console().print(f"[yellow]note:[/] {report.note}")


@main.command()
@click.argument("model")
@click.option("--pass", "pass_name", required=True, metavar="NAME", help="The variant to benchmark (see `attnopt passes`).")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE", help="A pass parameter; repeat for several.")
@click.option("--seq-len", "seq_lens", default="512,1024,2048", show_default=True, metavar="N,N,...",
              help="Comma-separated sequence lengths.")
@click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="onnxruntime execution provider. cuda binds inputs and outputs on the GPU (copies are not timed) "
                   "and reports the nodes onnxruntime ran on the CPU.")
@click.option("--target", default="portable", show_default=True, metavar="portable|ort-cuda",
              help="What the rewrite compiles for (see `attnopt rewrite --help`).")
@click.option("--repeats", type=click.IntRange(min=1), default=None, help="Timed runs per length, after warm-up.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), metavar="OUT.PNG",
              help="Also draw latency and memory against N (needs matplotlib).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def bench(model, pass_name, params, seq_lens, provider, target, repeats, plot_path, as_json):
    """Time MODEL against its rewrite across sequence lengths.

    For every N it reports the original and rewritten latency (median and
    spread over repeats after warm-up), the speedup, peak memory and the max
    error between the two. A model exported with a static sequence length
    refuses other lengths with a clear message.

    \b
    Example:
      attnopt bench bert.onnx --pass segmented -p segment_size=256 --seq-len 512,1024,2048,4096
      attnopt bench bert.onnx --pass segmented -p segment_size=512 --seq-len 8192 --provider cuda --plot b.png
      attnopt bench bert.fp16.onnx --pass segmented -p segment_size=512 --seq-len 16384 --provider cuda --target ort-cuda
    """
    import attnopt
    from .passes import pass_class
    parsed = _parse_params(params)
    pass_class(pass_name).parse_params(dict(parsed))
    lens = _parse_seq_lens(seq_lens)
    _require_file(model)
    if plot_path:
        _check_writable(Path(plot_path))
        _require_matplotlib()
    from .kernels.ort_cuda import check_target
    from .ort_runtime import providers_for
    providers_for(provider)  # a provider that cannot run fails now, before any progress is drawn
    kwargs = {"provider": provider, "target": check_target(target)}
    if repeats is not None:
        kwargs["repeats"] = repeats
    with _Progress(f"bench {pass_name}", enabled=not as_json) as progress:
        report = attnopt.bench(model, pass_name, parsed, lens, progress=progress, **kwargs)
    if plot_path:
        from .bench import plot
        plot(report, plot_path)
    d = report.to_dict()
    if as_json:
        _print_json(d)
        return
    con = _console()
    con.print(report.table())
    if plot_path:
        con.print(f"wrote {plot_path}")


@main.command()
@click.argument("model")
@click.option("--budget", type=float, required=True, metavar="COS",
              help="The end-to-end cosine to keep, in (0, 1]: 1.0 keeps the model exact.")
@click.option("--inputs", "inputs_path", type=click.Path(dir_okay=False), metavar="CALIB.NPZ",
              help="Calibration inputs, one array per graph input name (default: random ones at --seq-len).")
@click.option("--seq-len", type=click.IntRange(min=1), metavar="N", help="Sequence length of the random inputs.")
@click.option("--holdout", "holdout_path", type=click.Path(dir_okay=False), metavar="HELD.NPZ",
              help="Inputs the tuner does not see, laid out as --inputs: the plan's end-to-end cosine and attended "
                   "fraction on them are reported beside the calibration ones (the tuner fits its calibration "
                   "inputs, and routed's keys depend on the data).")
@click.option("--variants", default=",".join(TUNABLE), show_default=True, metavar="A,B,...",
              help="The variants to try (besides keeping a site dense). routed's cost depends on the data: it is "
                   "measured per head on the calibration inputs.")
@click.option("--no-head-groups", is_flag=True, help="One choice per site for all its heads.")
@click.option("--site-budget", type=float, metavar="COS",
              help="The cosine each site's own output must keep, upstream dense (default: --budget).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), metavar="PLAN.JSON",
              help="Where to write the plan (default MODEL.plan.json).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), metavar="OUT.PNG",
              help="Also draw each site's error against its attended fraction (needs matplotlib).")
@click.option("--json", "as_json", is_flag=True, help="Print the result (plan, candidates, checks) as JSON.")
def tune(model, budget, inputs_path, seq_len, holdout_path, variants, no_head_groups, site_budget, output, plot_path,
         as_json):
    """Find the cheapest rewrite per site (and per head group) of MODEL that keeps its outputs within
    a cosine BUDGET of the original on calibration inputs; write it as a plan.

    Every site tries the training-free variants over a small grid, and keeping
    dense; each candidate is measured alone (upstream sites dense), then whole
    plans are rewritten and run end to end, and the cheapest one measured
    within the budget is written. Apply it with `attnopt rewrite MODEL --plan`.

    \b
    Example:
      attnopt tune bert.onnx --budget 0.98 --inputs calib.npz --holdout held.npz -o plan.json --plot tune.png
      attnopt rewrite bert.onnx --plan plan.json -o bert.tuned.onnx
    """
    import attnopt
    from .tune_report import plot, table
    if not 0.0 < budget <= 1.0:
        raise AttnoptError(f"--budget must be a cosine in (0, 1], got {budget}")
    if site_budget is not None and not 0.0 < site_budget <= 1.0:
        raise AttnoptError(f"--site-budget must be a cosine in (0, 1], got {site_budget}")
    chosen = tuple(v.strip() for v in variants.split(",") if v.strip())
    _require_file(model)
    for path, what in ((inputs_path, "input file"), (holdout_path, "held-out input file")):
        if path is not None:
            _require_file(path, what)
    out = Path(output) if output else Path(model).with_name(Path(model).name.removesuffix(".onnx") + ".plan.json")
    _check_writable(out, model)
    if plot_path:
        _check_writable(Path(plot_path))
        _require_matplotlib()
    with _Progress("tune", enabled=not as_json) as progress:
        result = attnopt.tune(model, budget, inputs=inputs_path, seq_len=seq_len, variants=chosen,
                              head_groups=not no_head_groups, site_budget=site_budget, progress=progress,
                              holdout=holdout_path)
    result.plan.save(out)
    if plot_path:
        plot(result, plot_path, title=f"attnopt tune {Path(model).name}")
    if as_json:
        _print_json({**result.to_dict(), "output": str(out), "plot": plot_path, "holdout_inputs": holdout_path})
        return
    con = _console()
    con.print(table(result, f"{model}: tuned to cosine >= {budget}"))
    if result.holdout is not None:
        held, under = result.holdout, result.holdout.end_to_end < budget
        con.print(f"held-out inputs ({holdout_path}): end-to-end cosine {held.end_to_end:.4f} (calibration "
                  f"{result.end_to_end:.4f}), {held.attended_fraction:.3f} of keys attended (calibration "
                  f"{result.attended_fraction:.3f})" + (": under the budget; tune with a higher budget or more "
                                                        "calibration data" if under else ""),
                  style="yellow" if under else None, markup=False)
    con.print(f"wrote {out}" + (f" and {plot_path}" if plot_path else ""))


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise AttnoptError("--plot needs matplotlib: pip install 'attnopt[plot]'") from None


class _Progress:
    """A rich progress bar on stderr, handed to the API as ``progress(done, total, description)``."""

    def __init__(self, title: str, enabled: bool = True):
        self.title, self.enabled = title, enabled
        self._progress = self._task = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                      TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                                      console=_console(stderr=True), transient=True)
            self._progress.__enter__()
            self._task = self._progress.add_task(self.title, total=None)
        return self

    def __call__(self, done=None, total=None, description=None, **_):
        if self._progress is None:
            return
        upd = {}
        if total is not None:
            upd["total"] = total
        if done is not None:
            upd["completed"] = done
        if description:
            upd["description"] = f"{self.title}: {description}"
        self._progress.update(self._task, **upd)

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)
        return False


@main.command()
@click.argument("name", required=False, metavar="[NAME]")
@click.option("--json", "as_json", is_flag=True, help="Print the passes and their parameters as JSON.")
def passes(name, as_json):
    """List every registered pass, or show one pass in full.

    A pass is one long-sequence variant of attention (VARIANTS.md has the exact
    math). Its parameters are given to `rewrite` and `bench` as -p name=value;
    a value that does not validate is refused with the rule it broke, before
    the model is read. With NAME: each parameter's meaning, default and rule,
    the exact limit (where the pass equals dense attention), its cost, and what
    it refuses.

    \b
    Example:
      attnopt passes
      attnopt passes window
      attnopt rewrite bert.onnx --pass segmented -p segment_size=512 -p sinks=4
    """
    from .passes import pass_names
    from .passes.registry import describe
    if name is not None:
        info = describe(name)  # an unknown name is an InvalidParamsError: one line, exit 2
        if as_json:
            _print_json(info)
            return
        con = _console()
        con.print(f"{info['name']}: {info['summary']}")
        rows = [[p["name"], p["type"], p["default"], p["help"], p["rule"] or "-"] for p in info["parameters"]]
        con.print(_table(f"{name}: parameters", ["parameter", "type", "default", "meaning", "rule"], rows))
        con.print(f"exact limit: {info['exact_limit']}")
        if info["cost"]:
            con.print(f"cost: {info['cost']}")
        refuses = info["refuses"] + ([] if info["takes_sink_logits"] else ["learned sink logits (GPT-OSS)"])
        con.print("refuses: " + ("; ".join(refuses) or "nothing"))
        if info["takes_sink_logits"]:
            con.print("takes: learned sink logits (GPT-OSS's, one a head)")
        return
    info = [describe(n) for n in pass_names()]
    if as_json:
        _print_json(info)
        return
    rows = [[p["name"], p["summary"], ", ".join(f"{k}={v}" for k, v in p["params"].items())] for p in info]
    _console().print(_table("passes", ["pass", "what it does", "parameters (name=default)"], rows,
                            caption="`attnopt passes NAME` shows a pass in full"))


@main.command()
@click.argument("name", metavar="NAME")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the ONNX file.")
@click.option("--layers", type=click.IntRange(min=1), help="Number of encoder layers (default: the preset's).")
@click.option("--seq-len", type=click.IntRange(min=2), default=128, show_default=True,
              help="Sequence length of the example inputs used to trace (the exported axis stays dynamic).")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Weights and activations; float16 is what a GPU deployment runs (the inputs stay int64).")
def example(name, output, layers, seq_len, dtype):
    """Build a built-in example model (random weights) and export it to ONNX.

    NAME is one of: bert (2 layers, hidden 128, 4 heads), bert-base (4 layers,
    hidden 768, 12 heads; the benchmark model) or bert-large (24 layers, hidden
    1024, 16 heads). Inputs are input_ids and attention_mask, int64 (batch,
    seq), with batch and sequence length dynamic, so `bench` can vary N.

    \b
    Example:
      attnopt example bert -o bert.onnx
      attnopt example bert-base -o bert-base.onnx --layers 4
      attnopt example bert-base -o bert-base.fp16.onnx --dtype float16
    """
    from .examples import PRESETS, export_example
    if name not in PRESETS:
        raise AttnoptError(f"unknown example '{name}'; available: {', '.join(PRESETS)}")
    out = Path(output)
    _check_writable(out)
    export_example(name, out, seq_len=seq_len, layers=layers, dtype=dtype)
    cfg = PRESETS[name]
    click.echo(f"wrote {out} ({name}: {layers or cfg.layers} layers, hidden {cfg.hidden}, {cfg.heads} heads, {dtype}; "
               f"inputs input_ids, attention_mask: int64 (batch, seq))")


@main.command()
@click.option("--quick", is_flag=True, help="Shorter sequence lengths and fewer repeats (about 30 s).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def demo(quick, as_json):
    """The whole flow on a small BERT-style model, in about two minutes on a laptop CPU.

    Builds a 2-layer example encoder, exports it to ONNX in a temporary
    directory, detects its attention, rewrites it with every registered pass,
    validates each rewrite against the original and benchmarks each on CPU at
    a few sequence lengths. Ends with one table: sites rewritten, error and
    speedup per pass.

    \b
    Example:
      attnopt demo
      attnopt demo --quick --json
    """
    from .demo import print_summary, run_demo
    with _DemoProgress(enabled=not as_json) as progress:
        summary = run_demo(quick=quick, progress=progress)
    if as_json:
        _print_json(summary)
        return
    print_summary(summary, _console())


class _DemoProgress:
    """Step-by-step progress for the demo: ``progress(message, done, total)``."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._progress = self._task = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
            self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                      TimeElapsedColumn(), console=_console(stderr=True), transient=True)
            self._progress.__enter__()
            self._task = self._progress.add_task("demo", total=None)
        return self

    def __call__(self, message: str, done: int | None = None, total: int | None = None) -> None:
        if self._progress is None:
            return
        self._progress.update(self._task, description=message, completed=done, total=total)

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)
        return False


if __name__ == "__main__":  # pragma: no cover
    main()
