"""Attention math, executable: reference (the spec), torch custom ops, ONNX bodies.

Submodules load on demand, so ``import attnopt.kernels`` stays cheap:

- ``reference``: plain-torch spec per variant;
- ``segmented`` (and later one module per variant): ``torch.ops.attnopt.*``;
- ``onnx_functions``: ``ai.attnopt`` model-local functions (imports onnxscript);
- ``registry``: the table frontends use (``get_kernel``).
"""
