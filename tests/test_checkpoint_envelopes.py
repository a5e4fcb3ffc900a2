"""Training checkpoints as the upstream, DeiT and timm scripts write them, built with the real classes (yacs'
``CfgNode``, ``argparse.Namespace``, optimizer, scheduler and scaler state): they load with weights-only
unpickling and export with parity to the plain state dict; a pickle that would run code is still refused."""
from __future__ import annotations

import argparse
import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch

from evim_deploy.testing.extras import require
from evim_deploy.cli import main
from evim_deploy.errors import CheckpointError
from evim_deploy.model import safe_pickle
from evim_deploy.model.checkpoint import read_state_dict
from evim_deploy.targets import load
from evim_deploy.testing import randomized_model

yacs_config = require("yacs.config", "dev")

MODEL_ARGS = ("--model", "tiny", "--resolution", "64")
X = np.random.default_rng(5).standard_normal((2, 3, 64, 64)).astype(np.float32)


def upstream_config() -> yacs_config.CfgNode:
    """A nested yacs config shaped like classification/utils/config.py's, frozen as the script leaves it."""
    node = yacs_config.CfgNode
    config = node()
    config.MODEL = node(dict(NAME="EfficientViM_M1", NUM_CLASSES=1000, LABEL_SMOOTHING=0.1, RESUME=""))
    config.DATA = node(dict(IMG_SIZE=224, BATCH_SIZE=256, DATA_PATH="/data/imagenet", INTERPOLATION="bicubic"))
    config.TRAIN = node(dict(EPOCHS=300, BASE_LR=2e-3, WEIGHT_DECAY=0.05, CLIP_GRAD=None, AUTO_RESUME=True))
    config.TRAIN.DISTIILATION = node(dict(DISTILLATION_TYPE="none", TEACHER_PATH="", DISTILLATION_TAU=1.0))
    config.AUG = node(dict(MIXUP=0.8, CUTMIX=1.0, CUTMIX_MINMAX=None, REPROB=0.25))
    config.freeze()
    return config


def training_state(model: torch.nn.Module) -> dict:
    """Real optimizer (after one step: exp_avg tensors), scheduler and AMP scaler state of ``model``'s training."""
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]  # the cached model stays as it is
    optimizer = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.05)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=300)
    sum(p.sum() for p in params).backward()
    optimizer.step()
    scheduler.step()
    assert "exp_avg" in optimizer.state_dict()["state"][0]
    return {"optimizer": optimizer.state_dict(), "lr_scheduler": scheduler.state_dict(),
            "scaler": torch.amp.GradScaler("cpu").state_dict()}


@pytest.fixture(scope="module")
def state():
    return randomized_model("tiny").state_dict()


@pytest.fixture(scope="module")
def envelopes(tmp_path_factory, state):
    """The plain state dict and the three training envelopes around the same (EMA) weights."""
    folder = tmp_path_factory.mktemp("envelopes")
    raw = randomized_model("tiny", seed=1).state_dict()  # the non-EMA weights, which must not be picked
    train = training_state(randomized_model("tiny"))
    args = argparse.Namespace(model="efficientvim_m1", lr=2e-3, epochs=300, output_dir="output", model_ema=True,
                              scale=(0.08, 1.0), model_kwargs={}, device="cuda", distributed=False)
    files = {
        "plain": state,
        # classification/utils/utils.py::save_checkpoint_ema
        "upstream": {"model": raw, "optimizer": train["optimizer"], "lr_scheduler": train["lr_scheduler"],
                     "max_accuracy": 80.61, "scaler": train["scaler"], "epoch": 299, "config": upstream_config(),
                     "steps": 0, "model_ema": state, "max_accuray_ema": 81.02},
        # DeiT main.py
        "deit": {"model": raw, "optimizer": train["optimizer"], "lr_scheduler": train["lr_scheduler"],
                 "epoch": 299, "model_ema": state, "scaler": train["scaler"], "args": args},
        # timm train.py (CheckpointSaver)
        "timm": {"epoch": 299, "arch": "efficientvim_m1", "state_dict": raw, "optimizer": train["optimizer"],
                 "version": 2, "args": args, "amp_scaler": train["scaler"], "state_dict_ema": state,
                 "metric": 81.02},
    }
    paths = {}
    for name, content in files.items():
        paths[name] = folder / f"{name}.pth"
        torch.save(content, paths[name])
    return paths


@pytest.fixture(scope="module")
def plain_logits(envelopes, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "plain.onnx"
    assert main(["export", "--target", "onnx", *MODEL_ARGS, "--checkpoint", str(envelopes["plain"]),
                 "--output", str(out)]) == 0
    with load(out) as runtime:
        return runtime.run_nchw(X)


@pytest.mark.parametrize("name", ["upstream", "deit", "timm"])
def test_envelope_loads_exactly_the_ema_weights(envelopes, state, name):
    before = set(torch.serialization.get_safe_globals())
    loaded = read_state_dict(envelopes[name])
    assert set(torch.serialization.get_safe_globals()) == before  # the stand-ins were registered for the load only
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_the_stand_ins_carry_the_values_and_no_behaviour(envelopes):
    upstream, timm = safe_pickle.load(envelopes["upstream"]), safe_pickle.load(envelopes["timm"])
    config = upstream["config"]
    assert type(config) is type(config["TRAIN"]["DISTIILATION"]) is OrderedDict
    assert config["TRAIN"]["BASE_LR"] == 2e-3 and config["DATA"]["IMG_SIZE"] == 224
    assert config["TRAIN"]["DISTIILATION"]["DISTILLATION_TYPE"] == "none"
    assert isinstance(config, dict) and not hasattr(config, "merge_from_file")
    assert type(timm["args"]) is safe_pickle.NamespaceStandIn and timm["args"].scale == (0.08, 1.0)
    assert torch.is_tensor(upstream["optimizer"]["state"][0]["exp_avg"]) and upstream["scaler"]["scale"] == 65536.0


@pytest.mark.parametrize("name", ["upstream", "deit", "timm"])
def test_envelope_exports_to_onnx_with_parity_to_the_plain_state_dict(cli, tmp_path, envelopes, plain_logits, name):
    out = tmp_path / f"{name}.onnx"
    code, _, err = cli("export", "--target", "onnx", *MODEL_ARGS, "--checkpoint", envelopes[name], "--output", out)
    assert code == 0, err
    with load(out) as runtime:
        logits = runtime.run_nchw(X)
    assert np.abs(logits - plain_logits).max() <= 1e-6  # 0.0 measured: the same weights give the same graph


def test_numpy_metric_scalars_load_and_numpy_arrays_are_refused_by_name(tmp_path, state):
    """Forks of the training scripts keep metrics as numpy scalars: numbers, read from their bytes."""
    torch.save({"model": state, "max_accuracy": np.float64(80.61), "epoch": np.int64(299), "best": np.bool_(True)},
               tmp_path / "scalars.pth")
    envelope = safe_pickle.load(tmp_path / "scalars.pth")
    assert envelope["max_accuracy"] == np.float64(80.61) and envelope["epoch"] == 299 and envelope["best"]
    assert torch.equal(read_state_dict(tmp_path / "scalars.pth")["heads.0.weight"], state["heads.0.weight"])
    torch.save({"model": state, "history": np.arange(3.0)}, tmp_path / "array.pth")
    with pytest.raises(CheckpointError, match=r"the pickled global numpy\._core\.multiarray\._reconstruct, which "
                                              r"could run code"):
        read_state_dict(tmp_path / "array.pth")


class _RunsAShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_pickle_that_calls_os_system_is_refused_by_name(cli, tmp_path, state, writer):
    marker, evil, out = tmp_path / "pwned", tmp_path / "evil.pth", tmp_path / "evil.onnx"
    payload = {"model": state, "config": upstream_config(), "args": _RunsAShellCommand(marker)}
    if writer == "torch.save":
        torch.save(payload, evil)
    else:
        with open(evil, "wb") as f:
            pickle.dump(payload, f)  # protocol 4: torch stops at its first frame, before any global
    before = set(torch.serialization.get_safe_globals())
    code, _, err = cli("export", "--target", "onnx", *MODEL_ARGS, "--checkpoint", evil, "--output", out)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: refused to load"), err
    assert "re-save only the tensors" in err and "Traceback" not in err
    if writer == "torch.save":
        assert f"the pickled global {os.system.__module__}.system, which would run code when loaded" in err
    assert not marker.exists() and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pth"]
    assert set(torch.serialization.get_safe_globals()) == before


class _NamespaceThatSetsItsClass:
    def __reduce__(self):
        return argparse.Namespace, (), ({"lr": 0.1}, {"__class__": OrderedDict})


def test_a_stand_in_takes_no_state_but_a_dict(tmp_path, state):
    torch.save({"model": state, "args": _NamespaceThatSetsItsClass()}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="refused to load"):
        read_state_dict(tmp_path / "odd.pth")
