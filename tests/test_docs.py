"""The documentation holds together: a short README whose command table matches the commands, links
that resolve (files and section anchors), and no file outside tests/ that points outside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from mrdl_apps.cli import SUBCOMMANDS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, ROOT / "runtime" / "cpp" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = (m.group(1) for m in re.finditer(r"^#+ (.+)$", path.read_text(), flags=re.MULTILINE))
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def test_readme_is_short_and_names_every_command():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    section = text.split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    table = set(re.findall(r"`mrdl ([a-z-]+)", section))
    assert table == set(SUBCOMMANDS), "README's command table and mrdl's subcommands differ"
    for command in ("make demo", "make test", "mrdl-export", "mrdl-bench"):
        assert f"`{command}" in text


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(page: Path):
    broken = []
    for link in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+://", link):
            continue
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            broken.append(link)
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(link)
    assert not broken, f"{page.relative_to(ROOT)}: links to nothing: {broken}"


def test_no_file_outside_tests_points_outside_the_repository():
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files cannot be listed")
    suffixes = {".py", ".md", ".txt", ".cmake", ".toml", ".sh", ".in", ".cfg", ".json"}
    offenders = []
    for name in listed.splitlines():
        path = ROOT / name
        if name.startswith("tests/") or not path.is_file():
            continue
        if path.suffix in suffixes or path.name == "Makefile":
            text = path.read_text(errors="replace")
            offenders += [f"{name}: {m.group(0)}" for m in re.finditer(r"\.\./shared\b|/work/shared\b", text)]
    assert not offenders, offenders
