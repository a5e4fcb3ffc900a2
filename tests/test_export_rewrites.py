"""Export rewrites that keep a file on the accelerator (issue 17): ONNX LayerNormalization as primitive ops for
NNAPI (free on the CPU: ONNX Runtime fuses it back, bit-identical), and the ExecuTorch forms XNNPACK takes
(LayerNorm, split, token mean). Coverage counts themselves are checked in test_coverage.py and test_executorch.py."""
from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from evim_deploy.export.executorch_form import PrimitiveLayerNorm, for_xnnpack, primitive_layer_norms
from evim_deploy.export.onnx_nnapi import decompose_layer_norms
from evim_deploy.targets import export


def _ort(path, tmp_path):
    """(logits of a fixed input, op histogram of the graph ONNX Runtime's CPU optimizer makes of ``path``)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / f"{path.stem}.opt.onnx")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    logits = session.run(None, {"input": x})[0]
    return logits, collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


@pytest.mark.parametrize("opset", [17, 18])  # ReduceMean's axes: an attribute at 17, an input from 18
def test_onnx_layer_norms_are_primitive_and_the_cpu_fuses_them_back_bit_identical(trained_deploy, tmp_path, opset):
    primitive = export(trained_deploy, "onnx", tmp_path / "primitive.onnx", opset=opset)
    fused = export(trained_deploy, "onnx", tmp_path / "fused.onnx", opset=opset, fused_layer_norm=True)
    ops = collections.Counter(n.op_type for n in onnx.load(str(primitive)).graph.node)
    assert "LayerNormalization" not in ops and ops["Pow"] == 7
    assert collections.Counter(n.op_type for n in onnx.load(str(fused)).graph.node)["LayerNormalization"] == 7
    (a, optimized_a), (b, optimized_b) = _ort(primitive, tmp_path), _ort(fused, tmp_path)
    assert optimized_a == optimized_b and optimized_a["LayerNormalization"] == 7
    assert np.array_equal(a, b)


def test_a_layer_norm_that_reads_a_dequantize_stays_fused():
    """ONNX Runtime gives each consumer of a DequantizeLinear its own copy: the pattern's two readers of the
    input would read different tensors and the CPU would not re-fuse it."""
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 4, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8])
    inits = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in
             (("s", 0.1), ("w", np.ones(8)), ("b", np.zeros(8)))] + [numpy_helper.from_array(np.uint8(0), "z")]
    nodes = [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["xf"], "/dq"),
             helper.make_node("LayerNormalization", ["xf", "w", "b"], ["n1"], "/a/LayerNormalization", axis=-1),
             helper.make_node("LayerNormalization", ["n1", "w", "b"], ["y"], "/b/LayerNormalization", axis=-1)]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    ops = [(n.name, n.op_type) for n in decompose_layer_norms(model).graph.node]
    assert ("/a/LayerNormalization", "LayerNormalization") in ops and ("/b/Pow", "Pow") in ops
    assert [op for _, op in ops].count("LayerNormalization") == 1
    onnx.checker.check_model(model, full_check=True)


@pytest.mark.parametrize("affine", [True, False])
def test_primitive_layer_norm_matches_torchs(affine):
    norm = torch.nn.LayerNorm(48, eps=1e-6, elementwise_affine=affine)
    if affine:
        torch.nn.init.normal_(norm.weight)
        torch.nn.init.normal_(norm.bias)
    x = 3 + 5 * torch.randn(2, 49, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (PrimitiveLayerNorm(norm)(x) - norm(x)).abs().max() < 2e-5


def test_executorch_form_swaps_every_layer_norm_on_a_copy(trained_deploy):
    form = primitive_layer_norms(trained_deploy)
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in form.modules())
    assert sum(isinstance(m, PrimitiveLayerNorm) for m in form.modules()) == 7
    assert any(isinstance(m, torch.nn.LayerNorm) for m in trained_deploy.modules())  # the shared model is left as is
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (form(x) - trained_deploy(x)).abs().max() < 1e-5


def test_splits_become_slices_and_token_means_4d_means():
    class Module(torch.nn.Module):
        def forward(self, x):
            a, b, c = x.split([3, 3, 2], dim=-1)
            d, e = x.split(5, dim=1)
            return a.mean(1) + b.mean(1), c.mean(-2), d.mean(1, keepdim=True) + e.sum(1, keepdim=True)

    x = torch.randn(2, 9, 8)
    program = for_xnnpack(torch.export.export(Module(), (x,)))
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert not any("split" in t for t in targets) and "aten.slice.Tensor" in targets
    means = [n for n in program.graph.nodes if n.target == torch.ops.aten.mean.dim]
    assert means and all(n.args[0].meta["val"].dim() == 4 and list(n.args[1]) == [2, 3] for n in means)
    for got, want in zip(program.module()(x), Module()(x)):
        assert torch.allclose(got, want, atol=1e-6)


def test_the_cli_keeps_layer_norm_fused_on_request(cli, tmp_path):
    """``--fused-layer-norm`` reaches the exporter and the manifest says which form the file holds."""
    from evim_deploy.targets import load
    code, _, err = cli("export", "--target", "onnx", "--model", "m1", "--resolution", "64", "--no-verify",
                       "--fused-layer-norm", "--output", tmp_path / "m.onnx")
    assert code == 0, err
    assert load(tmp_path / "m.onnx").manifest.extra["layer_norm"] == "fused"
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node)
    assert ops["LayerNormalization"] == 10 and ops["Pow"] == 0
