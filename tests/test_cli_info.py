"""``evim-deploy info`` and the resolution parser."""
from __future__ import annotations

import pytest

from evim_deploy.errors import UsageError
from evim_deploy.model import parse_resolution


def test_info_prints_params_macs_and_parity(cli):
    code, out, _ = cli("info", "--model", "m1", "--resolution", "192x320")
    assert code == 0
    assert "6,679,458" in out and "192x320" in out and "bicubic" in out
    parity = float(out.split("max|Δlogit| ")[1].split(",")[0])
    assert parity <= 1e-4


@pytest.mark.parametrize("text,expected", [("224", (224, 224)), ("192x320", (192, 320)), ("256X128", (256, 128))])
def test_parse_resolution(text, expected):
    assert parse_resolution(text) == expected


@pytest.mark.parametrize("text", ["abc", "32", "224x16", "1x2x3"])
def test_bad_resolution_is_refused_with_the_minimum(text):
    with pytest.raises(UsageError) as info:
        parse_resolution(text)
    assert "use" in str(info.value)


def test_unknown_variant(cli):
    code, _, err = cli("info", "--model", "m9")
    assert code == 2 and "unknown model variant" in err and "m1" in err
