"""benchmarks/kernels.py's helpers that run without a GPU."""

from __future__ import annotations

import argparse

import pytest

from bench_scripts import load

kernels = load("kernels")


def test_a_tile_is_read_from_its_short_form():
    from attnopt.kernels.triton_band import BandConfig

    assert kernels.parse_tile("64x64w4s1") == BandConfig(64, 64, 4, 1, True, False)
    assert kernels.parse_tile("128x128w8s3+ws") == BandConfig(128, 128, 8, 3, True, True)


@pytest.mark.parametrize("text", ["64x64", "64x64w4", "64x64w4s1ws", "ax64w4s1"])
def test_a_malformed_tile_names_the_form(text):
    with pytest.raises(argparse.ArgumentTypeError, match="MxNwWsS"):
        kernels.parse_tile(text)


def test_a_band_of_no_row_is_read_as_a_row_would_be():
    assert kernels.parse_band("band:512,512,0,0") == (512, 512, 0, 0, False, None)
    assert kernels.parse_band("band:1,511,511,4,causal") == (1, 511, 511, 4, True, None)


@pytest.mark.parametrize("text", ["band:512,512,0", "band:0,1,1,0", "band:1,2,3,4,cause", "band:1,-2,3,4"])
def test_a_malformed_band_names_the_form(text):
    with pytest.raises(argparse.ArgumentTypeError, match="UNIT,BEFORE,AFTER,SINKS"):
        kernels.parse_band(text)
