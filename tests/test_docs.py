"""The docs the code cites live in the repo: every `docs/<page>.md §"<heading>"` in the sources, the
scripts and the docs themselves names a page of docs/ and a heading on it."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CITE = re.compile(r'docs/([\w.-]+\.md)\s*((?:§"[^"\n]+"[,;\s]*(?:and\s+)?)+)')
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.M)
TEXT_SUFFIXES = {".py", ".pyx", ".pxi", ".pxd", ".pyi", ".c", ".h", ".sh", ".toml", ".md", ".txt", ".cfg"}


def _tracked_text_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split()
    return [ROOT / p for p in out if Path(p).suffix in TEXT_SUFFIXES or Path(p).name == "CMakeLists.txt"]


def _citations() -> list[tuple[str, str, str]]:
    """(file:line, page, heading) for every heading citation."""
    found = []
    for path in _tracked_text_files():
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for m in CITE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            for heading in re.findall(r'§"([^"\n]+)"', m.group(2)):
                found.append((f"{path.relative_to(ROOT)}:{line}", m.group(1), heading))
    return found


def test_the_sources_cite_the_docs():
    pages = {c[1] for c in _citations()}
    assert {"architecture.md", "flannel-compat.md"} <= pages, pages


def test_every_cited_heading_exists():
    missing = []
    for where, page, heading in _citations():
        doc = ROOT / "docs" / page
        headings = set(HEADING.findall(doc.read_text())) if doc.is_file() else set()
        if heading not in headings:
            missing.append(f'{where}: docs/{page} §"{heading}"')
    assert missing == [], "\n".join(missing)

