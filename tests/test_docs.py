"""The README's target table is the target table (one table drives the CLI, the docs and the bench)."""
from __future__ import annotations

import re
from pathlib import Path

from evim_deploy.cli import build_parser
from evim_deploy.targets import TARGETS

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_target_table_matches_the_target_table():
    rows = re.findall(r"^\| (\w+) \| `(\.\w+)` \| ([^|]+) \| ([^|]+) \|$", README.read_text(), re.M)
    documented = {name: (suffix, extra.strip(), precisions.strip()) for name, suffix, extra, precisions in rows}
    expected = {spec.name: (spec.suffix, f"`pip install 'evim-deploy[{spec.extra}]'`" if spec.extra else "core",
                            ", ".join(spec.precisions)) for spec in TARGETS.values()}
    assert documented == expected


def test_every_target_is_an_export_target_of_the_cli():
    parser = build_parser()
    export = parser._subparsers._group_actions[0].choices["export"]
    target = next(a for a in export._actions if a.dest == "target")
    assert set(target.choices) == {*TARGETS, "all"}


def test_readme_float_group_table_is_the_vocabulary_and_each_targets_default_policy(trained_deploy):
    """Every named group is documented, and its "default float in" column is what each row's policy keeps."""
    from evim_deploy.quantize.groups import NAMED_GROUPS, split_groups
    rows = re.findall(r"^\| `(\w+)` \| [^|]+ \|\s*([\w, ]*?)\s*\|$", README.read_text(), re.M)
    documented = {group: {t.strip() for t in targets.split(",") if t.strip()} for group, targets in rows}
    expected = {group: set() for group in NAMED_GROUPS}
    for spec in TARGETS.values():
        for group in split_groups(spec.default_float_groups, trained_deploy)[0]:
            expected[group].add(spec.name)
    assert documented == expected
