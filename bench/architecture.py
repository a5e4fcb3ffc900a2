"""How well the target seam holds, in numbers: package files, the largest one, the lines that name a target outside
the target table and the per-target modules, and the import cycles (grimp, the graph import-linter checks).

    .venv/bin/python bench/architecture.py [--root DIR] [--type-checking]

``--root`` measures another checkout (e.g. an older commit in a worktree: ``git worktree add /tmp/old a92cb52``),
so a before/after comparison runs the same code on both trees. ``--type-checking`` counts imports under
``if TYPE_CHECKING:`` too (annotations only; they never run).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import grimp

TARGET_NAMES = ("onnx", "coreml", "tflite", "torch")  # every target the table has had; "torch" only as a module name
TABLES = ("targets.py", "backends.py")                # the table, and its name before the redesign
ROLES = ("export", "runtime", "formats")
OWN_MODULE = re.compile(rf"({'|'.join(TARGET_NAMES)})(_int8|_export|_backend)?\.py")


def target_literals(package: Path) -> list[str]:
    """Lines quoting "onnx", "coreml" or "tflite" outside the table, the per-target modules and gpu/."""
    literal = re.compile(r'"(onnx|coreml|tflite)"')
    hits = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        own = len(rel.parts) == 2 and rel.parts[0] in ROLES and OWN_MODULE.fullmatch(rel.parts[1])
        if str(rel) in TABLES or own or rel.parts[0] == "gpu":
            continue
        hits += [f"{rel}:{n}: {line.strip()[:110]}" for n, line in enumerate(path.read_text().splitlines(), 1)
                 if literal.search(line)]
    return hits


def import_cycles(root: Path, type_checking: bool) -> list[list[str]]:
    """Strongly connected groups of modules (Tarjan) in the package's import graph."""
    sys.path.insert(0, str(root))
    graph = grimp.build_graph("evim_deploy", exclude_type_checking_imports=not type_checking, cache_dir=None)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while not group or group[-1] != module:
                group.append(stack.pop())
            if len(group) > 1:
                cycles.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return cycles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--type-checking", action="store_true", help="count TYPE_CHECKING imports too")
    args = parser.parse_args(argv)
    package = args.root / "evim_deploy"
    lines = {path: len(path.read_text().splitlines()) for path in package.rglob("*.py")}
    largest = max(lines, key=lines.get)
    print(f"package .py files: {len(lines)} ({sum(lines.values())} lines); largest: "
          f"{largest.relative_to(package)} ({lines[largest]} lines)")
    hits = target_literals(package)
    print(f"lines naming a target outside the table and the target modules: {len(hits)}")
    print("".join(f"    {hit}\n" for hit in hits), end="")
    cycles = import_cycles(args.root, args.type_checking)
    print(f"import cycles ({'TYPE_CHECKING imports included' if args.type_checking else 'run-time imports'}): "
          f"{len(cycles)}")
    print("".join(f"    {' <-> '.join(group)}\n" for group in cycles), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
