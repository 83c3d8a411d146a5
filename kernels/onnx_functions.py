"""ONNX bodies for the ``ai.attnopt`` ops, attached to models as model-local functions.

A rewritten model carries these FunctionProtos in ``model.functions``; stock
onnxruntime inlines them at load and runs them on any execution provider,
with no custom-op library. Each variant's body lives in its folder
(``kernels/<variant>/onnx_body.py``, ``BODY`` plus the functions it calls in
``CALLS``); the op contract is ``kernels.spec``'s. Inputs are always present:
a function cannot test an empty optional input, so "no mask" is a
(1, 1, 1, 1) zero and "no key padding" a (1, 1) zero, which broadcast, and
"no sink logits" an empty (0,) tensor, whose size an ``If`` tests (``sink_onnx``).

Three facts make an attached function load in onnxruntime: the model imports
(``ai.attnopt``, 1); the function's default-domain opset equals the model's
(onnxscript stamps the opset it was written against, so ``function_proto``
restamps it); and ``to_model_proto`` does not attach called functions, so
``attach_functions`` does. Bodies use only ops whose semantics are unchanged
in opsets 17..23.

On the CUDA provider, a size that a Reshape, Expand, Range, Slice or Pad reads
must be computable on the host, or onnxruntime copies it there and the copy
waits for the GPU's queue to drain (the bench's placement report lists such
copies). onnxruntime keeps arithmetic on ``Shape``, ``Size`` and constants on
the host, but only in the graph holding the ``Shape``: so sizes come from
shapes and attributes, never from a reduction over a device tensor where a
formula exists, an ``If`` condition reads shapes, not values, and the sizes an
``If`` branch needs are computed before it (or from a ``Shape`` inside it).
Data-dependent sizes (lsh's and routed's bucket pairs) pay one such copy.

Each body reads its own sizes (B, H, N, D, Hkv, M) off Q and K, though the lines repeat: a shared helper
function whose inputs feed only Shape nodes made onnxruntime 1.32's constant folding drop the producer of
such an input when it was a Transpose the rewrite had inserted ("Node input ... is not a graph input,
initializer, or output of a previous node" at load; tried 2026-11-30 with a ``QKDims(Q, K)`` helper).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

import onnx
from onnxscript.values import Opset

from attnopt.onnx_compat import DOMAIN, DOMAIN_VERSION, MIN_OPSET

from .ort_cuda import msft_opset

attnopt_opset = Opset(DOMAIN, DOMAIN_VERSION)
# The versions of the non-default domains a body may use (com.microsoft: the ort-cuda lowerings' contrib ops).
_DOMAIN_VERSIONS = {DOMAIN: DOMAIN_VERSION, msft_opset.domain: msft_opset.version}


def _variant_bodies() -> dict:
    """op_type -> spec for every variant; bodies import only when asked for (a broken one breaks only itself)."""
    from .registry import all_variants

    return {spec.onnx_op_type: spec for spec in all_variants()}


_HELPERS: dict = {}  # op_type -> onnxscript function, for helpers met in a loaded body's CALLS


def _shared_helpers() -> tuple:
    """Helpers any body may call without listing them in CALLS."""
    from .prefix_sum_onnx import PrefixSum
    from .row_max_onnx import LastAxisMax
    from .softcap_onnx import Softcap

    return (Softcap, LastAxisMax, PrefixSum)


def _body(op_type: str):
    """The onnxscript function for ``op_type``: a variant's body, or a helper a loaded body calls."""
    variants = _variant_bodies()
    if op_type in variants:
        spec = variants[op_type]
        for fn in spec.onnx_helpers:
            _HELPERS[fn.name] = fn
        return spec.onnx_function
    if op_type in _HELPERS:
        return _HELPERS[op_type]
    shared = {fn.name: fn for fn in _shared_helpers()}
    if op_type in shared:
        return shared[op_type]
    from .ort_cuda import lowering_bodies  # a variant's ort-cuda lowering travels like a body

    lowerings = lowering_bodies()
    if op_type in lowerings:
        return lowerings[op_type]
    raise KeyError(f"no ONNX body for op type {op_type!r}; known: {sorted(variants)}")


def functions_for(op_types: Iterable[str]) -> list[str]:
    """``op_types`` plus every function their bodies call, callees first."""
    out: list[str] = []

    def visit(name: str) -> None:
        if name in out:
            return
        for node in all_nodes(_body(name).to_function_proto().node):
            if node.domain == DOMAIN:
                visit(node.op_type)
        out.append(name)

    for name in op_types:
        visit(name)
    return out


def all_nodes(nodes):
    """Every node, also those in the subgraphs of Scan, Loop and If bodies."""
    for node in nodes:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from all_nodes(attr.g.node)
            for graph in attr.graphs:
                yield from all_nodes(graph.node)


@lru_cache(maxsize=None)
def _function_bytes(op_type: str, opset_version: int) -> bytes:
    if opset_version < MIN_OPSET:
        raise ValueError(
            f"ai.attnopt bodies need default opset >= {MIN_OPSET}; the model uses opset {opset_version}"
        )
    proto = _body(op_type).to_function_proto()
    for entry in proto.opset_import:
        if entry.domain == "":
            entry.version = opset_version
    # onnxscript imports the domains of the top-level nodes only; a function (or a contrib op) called inside a
    # Scan, Loop or If body needs its domain imported too, or onnx.checker refuses the model.
    imported = {entry.domain for entry in proto.opset_import}
    for domain in dict.fromkeys(node.domain for node in all_nodes(proto.node)):
        if domain not in imported:
            proto.opset_import.append(onnx.helper.make_opsetid(domain, _DOMAIN_VERSIONS[domain]))
            imported.add(domain)
    return proto.SerializeToString(deterministic=True)


def function_proto(op_type: str, opset_version: int) -> onnx.FunctionProto:
    """The body of ``ai.attnopt::op_type``, importing default opset ``opset_version`` (the model's)."""
    return onnx.FunctionProto.FromString(_function_bytes(op_type, opset_version))


def _default_opset(opsets: dict[str, int]) -> int:
    if "" not in opsets:
        raise ValueError("the model does not import the default ONNX domain; cannot attach ai.attnopt bodies")
    return opsets[""]


def attach_functions(model, op_types: Iterable[str]) -> None:
    """Attach the bodies of ``op_types`` (and of what they call) to ``model``, in place.

    ``model`` is an onnx_ir.Model or onnx.ModelProto. Also imports (ai.attnopt, 1).
    Each body imports the model's default opset; an already attached body is
    replaced, so calling this twice is harmless.
    """
    op_types = functions_for(dict.fromkeys(op_types))
    if isinstance(model, onnx.ModelProto):
        opsets = {o.domain: o.version for o in model.opset_import}
        version = _default_opset(opsets)
        if DOMAIN not in opsets:
            model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
            opsets[DOMAIN] = DOMAIN_VERSION
        for op_type in op_types:
            proto = function_proto(op_type, version)
            for i, existing in enumerate(model.functions):
                if existing.domain == DOMAIN and existing.name == op_type:
                    model.functions[i].CopyFrom(proto)
                    break
            else:
                model.functions.append(proto)
            for entry in proto.opset_import:  # a lowering's com.microsoft
                if entry.domain not in opsets:
                    model.opset_import.append(onnx.helper.make_opsetid(entry.domain, entry.version))
                    opsets[entry.domain] = entry.version
        return

    import onnx_ir as ir

    if not isinstance(model, ir.Model):
        raise TypeError(f"attach_functions takes an onnx_ir.Model or onnx.ModelProto, not {type(model).__name__}")
    version = _default_opset(dict(model.opset_imports))
    model.opset_imports.setdefault(DOMAIN, DOMAIN_VERSION)
    for op_type in op_types:
        fn = ir.serde.deserialize_function(function_proto(op_type, version))
        model.functions[fn.identifier()] = fn
        for domain, domain_version in fn.opset_imports.items():  # a lowering's com.microsoft
            model.opset_imports.setdefault(domain, domain_version)


# --- schemas, so onnx.checker (full_check) accepts ai.attnopt nodes -----------------

_FLOAT_TYPES = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)"]
_ATTR_TYPES = {"int": onnx.defs.OpSchema.AttrType.INT, "float": onnx.defs.OpSchema.AttrType.FLOAT,
               "string": onnx.defs.OpSchema.AttrType.STRING}
_INPUT_DOCS = {
    "Q": ("T", "queries (B, H, N, D)"),
    "K": ("T", "keys (B, Hkv, M, D)"),
    "V": ("T", "values (B, Hkv, M, D)"),
    "Mask": ("TM", "dense remainder mask, additive, 4-D, broadcastable to (B, H, N, M); a (1,1,1,1) zero for none"),
    "KeyPadding": ("TM", "key padding, additive, (B | 1, M); a (1, 1) zero for none"),
    "SinkLogits": ("tensor(float)", "learned sink logit per query head, (H,); an empty (0,) tensor for none"),
}


def _schema(spec) -> onnx.defs.OpSchema:
    Param = onnx.defs.OpSchema.FormalParameter
    docs = {t.name: ("TC", t.help) for t in spec.tensor_inputs}
    docs.update({st.name: ("TS" if st.dtype == "query" else "TI", st.help) for st in spec.state})
    inputs = [Param(name, *(_INPUT_DOCS.get(name) or docs[name])) for name in spec.onnx_inputs]
    constraints = [("T", _FLOAT_TYPES, "query/key/value/output type"), ("TM", _FLOAT_TYPES, "mask type")]
    if spec.tensor_inputs:
        constraints.append(("TC", _FLOAT_TYPES + ["tensor(int64)"], "constant inputs the pass supplies"))
    if spec.state:
        constraints += [("TS", _FLOAT_TYPES, "state carried in the query's type"), ("TI", ["tensor(int64)"], "counters")]
    return onnx.defs.OpSchema(
        spec.onnx_op_type, DOMAIN, DOMAIN_VERSION, doc=spec.summary, inputs=inputs,
        outputs=[Param("Y", "T", "(B, H, N, D)")] + [Param(f"{st.name}_next", "TS" if st.dtype == "query" else "TI",
                                                        st.help) for st in spec.state],
        type_constraints=constraints,
        attributes=[onnx.defs.OpSchema.Attribute(name, _ATTR_TYPES[spec.onnx_attr_type(name)], "", required=True)
                    for name in spec.attr_names],
    )


def _prefix_sum_schema() -> onnx.defs.OpSchema:
    Param = onnx.defs.OpSchema.FormalParameter
    return onnx.defs.OpSchema(
        "PrefixSum", DOMAIN, DOMAIN_VERSION, doc="the inclusive running sum along axis -2 (prefix_sum_onnx)",
        inputs=[Param("X", "T", "(..., L, C)")], outputs=[Param("Y", "T", "X's running sum along L")],
        type_constraints=[("T", _FLOAT_TYPES + ["tensor(int32)", "tensor(int64)"], "summed type")])


def register_schemas() -> None:
    """Register an OpSchema per variant op, and for PrefixSum, which a graph calls directly (once per process);
    the bodies' other helpers need none."""
    from .registry import all_variants

    for schema in [_schema(spec) for spec in all_variants()] + [_prefix_sum_schema()]:
        if not onnx.defs.has(schema.name, DOMAIN):
            onnx.defs.register_schema(schema)
