"""Checkpoint loading: envelopes, timm layout, safetensors, inference, and every bad input."""
from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from evim_deploy.errors import CheckpointError
from evim_deploy.model import create_model
from evim_deploy.testing import randomized_model

X = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))


def logits(model):
    with torch.no_grad():
        return model(X)


def timm_layout(state):
    """timm's port stores LayerNorm affines as flat [C] vectors."""
    return {k: v.reshape(-1) if ("norm" in k and v.dim() in (3, 4) and k.endswith(("weight", "bias"))) else v
            for k, v in state.items()}


@pytest.fixture(scope="module")
def state():
    return randomized_model("m1").state_dict()


def test_official_envelope_prefers_model_ema(tmp_path, state):
    other = create_model("m1", seed=7).state_dict()
    path = tmp_path / "ckpt.pth"
    torch.save({"model": other, "model_ema": state, "epoch": 299, "optimizer": {"lr": 0.1}}, path)
    assert torch.equal(logits(create_model("m1", path)), logits(randomized_model("m1")))


def test_timm_and_official_layouts_give_identical_logits(tmp_path, state):
    flat = timm_layout(state)
    assert flat["norm.3.weight"].shape == (320,) and state["norm.3.weight"].shape == (1, 320, 1, 1)
    torch.save(state, tmp_path / "official.pth")
    torch.save(flat, tmp_path / "timm.pth")
    a = logits(create_model("m1", tmp_path / "official.pth"))
    b = logits(create_model("m1", tmp_path / "timm.pth"))
    assert torch.equal(a, b)


def test_safetensors_and_module_prefix(tmp_path, state):
    save_file({f"module.{k}": v.contiguous() for k, v in timm_layout(state).items()}, tmp_path / "w.safetensors")
    assert torch.equal(logits(create_model("m1", tmp_path / "w.safetensors")), logits(randomized_model("m1")))


def test_num_classes_and_distillation_are_inferred(tmp_path):
    source = create_model("m1_dist", num_classes=10, seed=3)
    torch.save({"model": source.state_dict()}, tmp_path / "d.pth")
    model = create_model("m1", tmp_path / "d.pth")
    assert model.num_classes == 10 and model.distillation and model.manifest.variant == "m1_dist"
    assert model.manifest.source_sha256 and len(model.manifest.labels) == 10
    assert torch.equal(logits(model), logits(source))


# ---- bad input: one line, non-zero exit, the problem and the fix -------------------------------------------
def _assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    text = " ".join(err.split())
    assert lines[-1].startswith("error:") or "error:" in text
    assert "Traceback" not in err
    for needle in needles:
        assert needle in text, text


def test_missing_checkpoint(cli, tmp_path):
    code, _, err = cli("info", "--checkpoint", tmp_path / "nope.pth")
    _assert_one_line_error(code, err, "checkpoint not found")


def test_truncated_checkpoint(cli, tmp_path, state):
    path = tmp_path / "cut.pth"
    torch.save(state, path)
    path.write_bytes(path.read_bytes()[:5000])
    code, _, err = cli("info", "--checkpoint", path)
    _assert_one_line_error(code, err, "truncated or corrupt", "re-download")


def test_corrupt_checkpoint(cli, tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"this is not a checkpoint" * 100)
    code, _, err = cli("info", "--checkpoint", path)
    _assert_one_line_error(code, err, "corrupt")


class _Exploit:
    def __reduce__(self):
        import os
        return os.system, ("touch /tmp/evim_pwned",)


def test_pickle_that_would_run_code_is_refused(cli, tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": _Exploit()}, f)
    torch.save({"model": {"x": _Exploit()}}, tmp_path / "evil2.pth")
    for p in (path, tmp_path / "evil2.pth"):
        code, _, err = cli("info", "--checkpoint", p)
        assert code == 2 and "Traceback" not in err
        assert "refused" in err or "corrupt" in err
    import os
    assert not os.path.exists("/tmp/evim_pwned")


def test_wrong_variant_names_the_likely_one(cli, tmp_path):
    torch.save(create_model("m2").state_dict(), tmp_path / "m2.pth")
    code, _, err = cli("info", "--model", "m1", "--checkpoint", tmp_path / "m2.pth")
    _assert_one_line_error(code, err, "does not fit m1", "--model m2")


def test_wrong_num_classes(cli, tmp_path):
    torch.save(create_model("m1", num_classes=10).state_dict(), tmp_path / "c10.pth")
    code, _, err = cli("info", "--checkpoint", tmp_path / "c10.pth", "--num-classes", "1000")
    _assert_one_line_error(code, err, "10 classes", "--num-classes")


def test_mismatched_keys_are_named(tmp_path, state):
    broken = dict(state)
    broken["stages.0.blocks.0.ffn.fc1.conv.weight"] = torch.zeros(3, 3)
    del broken["heads.1.bias"]
    torch.save(broken, tmp_path / "b.pth")
    with pytest.raises(CheckpointError) as info:
        create_model("m1", tmp_path / "b.pth")
    message = str(info.value)
    assert "stages.0.blocks.0.ffn.fc1.conv.weight" in message and "heads.1.bias" in message


def test_a_corrupt_key_name_keeps_the_error_on_one_line(tmp_path, state):
    """A flipped byte can turn a key's letter into a newline (found by tests/test_fuzz.py)."""
    broken = dict(state)
    broken["heads.1.bi\nas"] = broken.pop("heads.1.bias")
    torch.save(broken, tmp_path / "b.pth")
    with pytest.raises(CheckpointError) as info:
        create_model("m1", tmp_path / "b.pth")
    assert "\n" not in str(info.value) and "heads.1.bi\\nas" in str(info.value)


def test_not_an_efficientvim_checkpoint(tmp_path):
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="no EfficientViM weights"):
        create_model("m1", tmp_path / "x.pth")
