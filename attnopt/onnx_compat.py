"""What a rewritten ONNX model must satisfy to load in stock onnxruntime: one home for these facts."""

# onnxruntime 1.30 rejects IR version 14, which onnx 1.23's helpers write ("max supported IR version: 13").
IR_VERSION = 10
# The domain of attnopt's ops; every rewritten model imports it and carries the bodies as local functions.
DOMAIN = "ai.attnopt"
DOMAIN_VERSION = 1
# The ai.attnopt bodies use opset-17 ops (LayerNormalization-era Shape(start, end), ...).
MIN_OPSET = 17
