"""kernels/pooling_onnx.py: PoolWindows is PoolRanges over [start, start + width), read from a table of ranges.

Both ONNX functions run in onnxscript's eager mode on random prefixes, with starts that run off
both ends of the blocks (clipped or empty ranges) and width 0 (an unused column).
"""

from __future__ import annotations

import numpy as np

from attnopt.kernels.pooling_onnx import PoolRanges, PoolWindows


def test_pool_windows_equals_pool_ranges_bit_for_bit():
    rng = np.random.default_rng(0)
    b, hkv, nb, d, r, c = 2, 3, 9, 8, 5, 7
    prefix_k = np.concatenate([np.zeros((b, hkv, 1, d)), rng.standard_normal((b, hkv, nb, d)).cumsum(2)], axis=2)
    prefix_v = np.concatenate([np.zeros((b, hkv, 1, d)), rng.standard_normal((b, hkv, nb, d)).cumsum(2)], axis=2)
    per_block = rng.uniform(0.0, 2.0, (b, nb))
    per_block[1, 3] = 0.0  # a fully masked block: a range of it alone has mass 0 (log mass -inf)
    mass = np.concatenate([np.zeros((b, 1)), per_block.cumsum(1)], axis=1)
    shift = rng.standard_normal((b, 1))
    widths = np.array([0, 1, 2, 4], np.int64)
    start = rng.integers(-6, nb + 3, (r, c)).astype(np.int64)
    width = rng.integers(0, len(widths), (r, c)).astype(np.int64)

    got = PoolWindows(prefix_k, prefix_v, mass, shift, start, width, widths)
    want = PoolRanges(prefix_k, prefix_v, mass, shift, start, start + widths[width])
    for g, w in zip(got, want):
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_array_equal(g, w)
    assert np.isneginf(np.asarray(got[2])[:, width == 0]).all()  # width 0: empty, log mass -inf
