"""Reference model: exact parameter counts, MACs, any H x W; deploy form parity with randomized statistics."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from evim_deploy.model import VARIANTS, count_macs, count_params, create_model, reparameterize
from evim_deploy.model.deploy import DeployEfficientViM
from evim_deploy.testing import deploy_model, randomized_model

ALL_VARIANTS = list(VARIANTS)


@pytest.mark.parametrize("name", ["m1", "m2", "m3", "m4"])
def test_parameter_count_is_exact(name):
    assert count_params(create_model(name)) == VARIANTS[name].params


@pytest.mark.parametrize("name", ["m1", "m2", "m3", "m4"])
def test_macs_within_two_percent_of_paper(name):
    variant = VARIANTS[name]
    macs = count_macs(create_model(name), (variant.input_size,) * 2) / 1e6
    assert abs(macs - variant.paper_macs) / variant.paper_macs < 0.02, macs


def test_distilled_variant_has_second_head_set():
    model = create_model("m1_dist")
    assert model.distillation and len(model.heads_dist) == 4
    assert count_params(model) == VARIANTS["m1"].params + sum(p.numel() for p in model.heads_dist.parameters()) + 4


@pytest.mark.parametrize("name", ALL_VARIANTS)
@pytest.mark.parametrize("size", [(224, 224), (192, 320)])
def test_deploy_matches_reference_with_randomized_statistics(name, size):
    reference = randomized_model(name)
    deploy = reparameterize(reference, size)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = reference(x), deploy(x)
    assert expected.shape == (2, 1000)
    assert (expected - got).abs().max().item() <= 1e-4
    # the randomization must make the logits depend on the input, or parity would prove nothing
    assert (expected[0] - expected[1]).abs().max().item() > 1e-2


def test_non_square_input_runs_through_the_reference():
    model = randomized_model("m1")
    with torch.no_grad():
        assert model(torch.randn(1, 3, 160, 288)).shape == (1, 1000)


def test_deploy_form_has_only_plain_modules():
    plain = (nn.Conv2d, nn.Linear, nn.LayerNorm, nn.ReLU, nn.Identity)
    leaves = [m for m in deploy_model("m1_dist").modules() if not list(m.children())]
    assert leaves and all(isinstance(m, plain) for m in leaves), {type(m).__name__ for m in leaves}


def test_deploy_head_is_a_single_linear():
    deploy = deploy_model("m1_dist")
    linears = [m for m in deploy.head.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1 and linears[0].in_features == 128 + 192 + 320 + 320


def test_reparameterize_leaves_the_reference_untouched():
    model = randomized_model("m1")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reparameterize(model, (224, 224))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_mixer_A_cancels_in_the_token_softmax():
    model = randomized_model("m2")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        before = model(x)
        shifted = create_model("m2")
        shifted.load_state_dict(model.state_dict())
        for block in (b for s in shifted.stages for b in s.blocks):
            block.mixer.A.add_(0.5)
        assert torch.allclose(before, shifted(x), atol=1e-5)


def test_deploy_form_is_traceable_with_static_shapes():
    deploy = deploy_model("m1", (192, 320))
    assert isinstance(deploy, DeployEfficientViM) and deploy.input_size == (192, 320)
    traced = torch.jit.trace(deploy, torch.randn(1, 3, 192, 320), check_trace=False)
    graph = str(traced.graph)
    assert "aten::size" not in graph and "aten::zeros" not in graph
