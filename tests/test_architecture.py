"""The module map in docs/architecture.md is true: every module imports exactly the package modules it lists."""

from __future__ import annotations

import ast
import re

from conftest import REPO

PACKAGE = REPO / "src" / "inceptionv3"


def _documented() -> dict[str, set[str]]:
    text = (REPO / "docs" / "architecture.md").read_text()
    block = re.search(r"## What may import what.*?```text\n(.*?)```", text, re.S).group(1)
    rules = {}
    for line in block.strip().splitlines():
        module, _, deps = line.partition(":")
        rules[module.strip()] = {d.strip() for d in deps.split(",") if d.strip()}
    return rules


def _actual(path) -> set[str]:
    """Package modules a file imports. In a subpackage (serve/) a sibling is named ``serve.x`` and ``..x`` is a
    top-level module, so one map covers both levels."""
    sub = path.parent.name if path.parent != PACKAGE else None
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        top = node.level == (2 if sub else 1)
        prefix = "" if top else f"{sub}."
        if node.module:
            imported.add(prefix + node.module.split(".")[0])
        else:  # `from . import x`: a submodule, or a name from the package itself (its version string)
            folder = PACKAGE if top else path.parent
            imported.update(prefix + (a.name if (folder / f"{a.name}.py").exists() else "__init__")
                            for a in node.names)
    return imported


def _modules() -> dict[str, object]:
    modules = {p.stem: p for p in PACKAGE.glob("*.py")}
    for folder in (p for p in PACKAGE.iterdir() if (p / "__init__.py").exists()):
        modules.update({f"{folder.name}.{p.stem}": p for p in folder.glob("*.py")})
    return modules


def test_every_module_is_on_the_map_and_imports_only_what_it_lists():
    rules = _documented()
    modules = _modules()
    assert set(rules) == set(modules), set(rules) ^ set(modules)
    wrong = {name: sorted(_actual(path) ^ rules[name]) for name, path in modules.items()
             if _actual(path) != rules[name]}
    assert not wrong, f"imports differ from docs/architecture.md: {wrong}"


def test_the_map_is_layered_so_no_import_points_up_or_closes_a_circle():
    """Each module imports only modules listed before it, which rules out circles; a subpackage's name stands for its
    ``__init__``."""
    order = {name: i for i, name in enumerate(_documented())}
    upward = [(name, dep) for name, deps in _documented().items() for dep in deps
              if order[dep if dep in order else f"{dep}.__init__"] >= order[name]]
    assert not upward, f"these imports point up the map: {upward}"


def test_the_documented_diffs_for_a_new_backend_and_format_match_the_code():
    """The diffs docs/architecture.md shows as "all it takes" are the real ones: each added file is the file as it
    is, and each added line is in the file it names."""
    text = (REPO / "docs" / "architecture.md").read_text()
    blocks = re.findall(r"```diff\n(.*?)```", text, re.S)
    assert len(blocks) == 2
    for block in blocks:
        sections = re.split(r"^--- .*\n\+\+\+ b/(\S+)\n", block, flags=re.M)[1:]
        assert len(sections) == 4
        for path, body in zip(sections[::2], sections[1::2], strict=True):
            real = (REPO / path).read_text()
            added = [line[1:] for line in body.splitlines() if line.startswith("+")]
            if body.startswith("@@ -0,0"):
                assert "\n".join(added) + "\n" == real, path
            else:
                assert all(line in real.splitlines() for line in added), path
                context = [line[1:] for line in body.splitlines() if line.startswith(" ")]
                assert all(line in real.splitlines() for line in context), path
