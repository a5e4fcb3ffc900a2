"""The README's backend table is the backend table (one table drives the CLI, the docs and the bench)."""
from __future__ import annotations

import re
from pathlib import Path

from evim_deploy.backends import BACKENDS
from evim_deploy.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_backend_table_matches_the_backend_table():
    rows = re.findall(r"^\| (\w+) \| `(\.\w+)` \| ([^|]+) \| ([^|]+) \|$", README.read_text(), re.M)
    documented = {name: (suffix, extra.strip(), precisions.strip()) for name, suffix, extra, precisions in rows}
    expected = {spec.name: (spec.suffix, f"`pip install 'evim-deploy[{spec.extra}]'`" if spec.extra else "core",
                            ", ".join(spec.precisions)) for spec in BACKENDS.values()}
    assert documented == expected


def test_every_backend_is_an_export_target_of_the_cli():
    parser = build_parser()
    export = parser._subparsers._group_actions[0].choices["export"]
    target = next(a for a in export._actions if a.dest == "target")
    assert set(target.choices) == {*BACKENDS, "all"}
