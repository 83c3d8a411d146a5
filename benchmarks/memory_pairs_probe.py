"""An experiment, not taken (BENCHMARKS.md): memory with S = M_mem as one cuDNN call over overlapping key pairs.

Query segment s >= 1 attends to keys [(s-1)S, (s+1)S): 2S contiguous keys, so K and V can be viewed with
as_strided as (B*H, nseg-1, 2S, D) with a segment stride of S*D (overlapping, no copy), segment 0 to its own.
Against the committed fast path (cuDNN on own segments + cuDNN on the previous ones + the LSE merge). On the
GPU machine: python3 benchmarks/memory_pairs_probe.py
"""
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

from attnopt.kernels import triton_band

B, H, N, D, S = 1, 16, 65536, 128, 1024
NSEG = N // S
SCALE = D ** -0.5


def pairs_view(t):
    """(B*H, nseg - 1, 2S, D): segment s >= 1's keys [(s-1)S, (s+1)S), overlapping views of t (no copy)."""
    return t.view(B * H, N, D).as_strided((B * H, NSEG - 1, 2 * S, D), (N * D, S * D, D, 1))


def pairs(q, k, v, backend, contiguous=False):
    """The whole op: the pairs call, segment 0 by itself, one cat."""
    def run():
        kp, vp = pairs_view(k), pairs_view(v)
        if contiguous:
            kp, vp = kp.contiguous(), vp.contiguous()
        qs, ks, vs = (t.view(B * H, NSEG, S, D) for t in (q, k, v))
        with sdpa_kernel(backend):
            o1 = F.scaled_dot_product_attention(qs[:, 1:], kp, vp, scale=SCALE)
            o0 = F.scaled_dot_product_attention(qs[:, :1], ks[:, :1], vs[:, :1], scale=SCALE)
        return torch.cat([o0, o1], 1).view(B, H, N, D)
    return run


def only_pairs(q, k, v, backend):
    kp, vp, qs = pairs_view(k), pairs_view(v), q.view(B * H, NSEG, S, D)[:, 1:]

    def run():
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(qs, kp, vp, scale=SCALE)
    return run


def main() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))

    def committed():
        return triton_band._band_attention(q, k, v, unit=S, before=S, after=0, sinks=0, scale=SCALE, causal=False)

    ref = committed()
    print(f"committed fast path: {do_bench(committed, rep=200):.3f} ms")
    for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
        for contiguous in (False, True):
            try:
                fn = pairs(q, k, v, backend, contiguous)
                err = (fn().float() - ref.float()).abs().max().item()
                print(f"pairs {name} contiguous={contiguous}: {do_bench(fn, rep=200):.3f} ms, max diff {err:.4f}")
            except Exception as e:  # noqa: BLE001  a backend that refuses the strides is an answer too
                print(f"pairs {name} contiguous={contiguous}: {type(e).__name__}: {str(e)[:200]}")
        try:
            print(f"  the pairs call alone ({name}): {do_bench(only_pairs(q, k, v, backend), rep=200):.3f} ms")
        except Exception as e:  # noqa: BLE001
            print(f"  the pairs call alone ({name}): {type(e).__name__}: {str(e)[:200]}")


if __name__ == "__main__":
    main()
