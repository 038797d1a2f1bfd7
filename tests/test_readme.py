"""The README's Development section is the tree: every package and top-level module of ``src/splitpriv`` appears in
its layout block (nested packages under their parent, by indentation), and nothing it names is gone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "splitpriv"


def layout() -> set[str]:
    """Paths the README's ``src/splitpriv/`` block names: ``parts/``, ``roles/customer/``, ``registry.py``, ..."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Development"):]
    block = section[section.index("```\nsrc/splitpriv/\n") + len("```\nsrc/splitpriv/\n"):]
    block = block[: block.index("```")]
    names, parents = set(), []
    for line in block.splitlines():
        match = re.match(r"^( +)(\S+)", line)
        if not match or len(match.group(1)) > 2 * (len(parents) + 1) or not re.fullmatch(r"[\w.]+/?", match.group(2)):
            continue  # a continuation line of a description
        depth = len(match.group(1)) // 2 - 1
        parents = parents[:depth]
        entry = "/".join([*parents, match.group(2).rstrip("/")])
        names.add(entry + ("/" if match.group(2).endswith("/") else ""))
        if match.group(2).endswith("/"):
            parents.append(match.group(2).rstrip("/"))
    return names


def source() -> set[str]:
    packages = {p.parent.relative_to(SRC).as_posix() + "/" for p in SRC.rglob("__init__.py") if p.parent != SRC}
    return packages | {p.name for p in SRC.glob("*.py")}


def test_every_package_and_top_level_module_is_in_the_readme():
    assert sorted(source() - layout()) == []


def test_the_readme_names_nothing_that_is_gone():
    assert sorted(layout() - source()) == []
