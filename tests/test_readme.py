"""The README reads in one screen and its links hold; ``docs/development.md`` is the tree: every package and top-level
module of ``src/splitpriv`` appears in its layout block (nested packages under their parent, by indentation), and
nothing it names is gone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "splitpriv"


def layout() -> set[str]:
    """Paths the development page's ``src/splitpriv/`` block names: ``parts/``, ``roles/customer/``, ``registry.py``..."""
    section = (ROOT / "docs" / "development.md").read_text()
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


def test_the_readme_reads_in_one_screen():
    """What it is, the two set-up commands, a captured output of the main job, the headline, then links."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 45
    blocks = re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S)
    commands = [line.split("#")[0].strip() for line in blocks[0][1].splitlines()]
    assert commands == ["bash scripts/main.sh", "bash scripts/test.sh"]
    assert blocks[1][1].startswith("main job: accuracy ") and "empirical privacy" in blocks[1][1]
    assert "set-level attack" in blocks[1][1] and "labels:" in blocks[1][1]
    assert "**Headline**" in text and "labels" in text.split("**Headline**")[1].lower()
    assert not re.search(r"[A-Z_]{8,}", text.replace("SPLITPRIV", "")), "a placeholder left in the README"


def test_every_relative_link_of_the_readme_and_docs_exists():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith(("http://", "https://")):
                assert (page.parent / target).exists(), f"{page.name} links to {target}, which is not there"
