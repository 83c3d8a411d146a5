"""Shared fixtures: the model zoo (tests/zoo.py), built lazily and cached on disk.

A test asks for one zoo combination by naming a fixture; collection parametrizes it
over every applicable combination from the static case table, without building
anything. The model is built (or read from ``.zoo_cache/``) when the test runs.

    def test_x(zoo_onnx_case):   # one (case, ONNX exporter): .case .exporter .path
    def test_y(zoo_fx_case):     # one (case, fx tracer): .case .tracer .graph .example_inputs

Narrow the combinations with the ``zoo`` marker:

    @pytest.mark.zoo(select=lambda case, how: case.family == "bert" and how == "dynamo")
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo as zoo_lib  # noqa: E402  (tests/ is not a package; works for pytest and `python -m tests.zoo`)

ZooCase = zoo_lib.ZooCase


@dataclass(frozen=True)
class ZooOnnxCase:
    case: ZooCase
    exporter: str
    path: Path
    record: Any  # zoo.BuildRecord

    @property
    def id(self) -> str:
        return f"{self.case.name}/{self.exporter}"


@dataclass(frozen=True)
class ZooFxCase:
    case: ZooCase
    tracer: str
    graph: Any  # ExportedProgram, GraphModule or nn.Module
    example_inputs: tuple | None  # None for an ExportedProgram: it carries its own shapes
    module: Any
    inputs: tuple  # the case's example inputs, whatever the tracer

    @property
    def id(self) -> str:
        return f"{self.case.name}/{self.tracer}"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "zoo(select): restrict zoo_onnx_case / zoo_fx_case to combinations where "
                   "select(case: ZooCase, exporter_or_tracer: str) is true")


def zoo_params(kind: str, select: Callable[[ZooCase, str], bool] | None = None) -> list:
    """pytest.params of (case name, exporter/tracer) for kind 'onnx' or 'fx'. Builds nothing."""
    combos = zoo_lib.onnx_combos() if kind == "onnx" else zoo_lib.fx_combos()
    out = []
    for name, how in combos:
        case = zoo_lib.CASES_BY_NAME[name]
        if select is None or select(case, how):
            out.append(pytest.param((name, how), id=f"{name}/{how}", marks=pytest.mark.slow))
    return out


def pytest_generate_tests(metafunc):
    marker = metafunc.definition.get_closest_marker("zoo")
    select = marker.kwargs.get("select") if marker else None
    for fixture, kind in (("zoo_onnx_case", "onnx"), ("zoo_fx_case", "fx")):
        if fixture in metafunc.fixturenames:
            metafunc.parametrize(fixture, zoo_params(kind, select), indirect=True)


@pytest.fixture(scope="session")
def zoo() -> zoo_lib.Zoo:
    """The session's zoo; builds on first use, reusing <repo>/.zoo_cache/."""
    return zoo_lib.Zoo.default()


@pytest.fixture(scope="session")
def zoo_cases() -> dict[str, ZooCase]:
    return dict(zoo_lib.CASES_BY_NAME)


@pytest.fixture
def zoo_onnx_case(request, zoo) -> ZooOnnxCase:
    name, exporter = request.param
    path = zoo.onnx_path(name, exporter)  # raises ZooBuildError (a zoo bug) if the export failed
    return ZooOnnxCase(zoo_lib.CASES_BY_NAME[name], exporter, path, zoo.record(name, exporter))


@pytest.fixture
def zoo_fx_case(request, zoo) -> ZooFxCase:
    name, tracer = request.param
    graph, example_inputs = zoo.fx_graph(name, tracer)
    built = zoo.build(name)
    return ZooFxCase(zoo_lib.CASES_BY_NAME[name], tracer, graph, example_inputs, built.module, built.inputs)


@pytest.fixture(autouse=True)
def _terminal_width_of_a_pipe(monkeypatch):
    """CLI output as a pipe gets it (attnopt.cli._console: 140 columns when COLUMNS is unset).

    pytest-xdist's workers set COLUMNS=80, which the CLI honours as a user's setting, so tables
    would wrap differently under ``-n`` than in a serial run.
    """
    monkeypatch.delenv("COLUMNS", raising=False)
