"""The docs and the code cite only what exists in this repository.

A user's clone is all they have: a citation of a file, a Make target or a section of
docs/ARCHITECTURE.md that is not there is a dead end. This test reads every text file git knows
and fails on each dead reference, so renaming a module or a section cannot leave one behind.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
TEXT_SUFFIXES = {".py", ".md", ".bicep", ".yaml", ".yml", ".toml", ".json", ".sh", ".txt", ""}
#: Repository paths as docs and docstrings write them: a top-level folder, then a file.
PATH = re.compile(
    r"(?<![\w./-])((?:docs|visionpipe|functions|training_job|tests|bench|infra|scripts|\.ci)"
    r"/[\w./-]*\w)"
)
#: Citations of a section of the contract, by name: docs/ARCHITECTURE.md, "Name".
SECTION = re.compile(r'ARCHITECTURE\.md(?:`)?,?\s+(?:#:?\s*)?(?:section\s+)?"([^"]+)"')
MD_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
#: Citations of the seed documents that sit beside the repository, not in it (a clone lacks them).
FORBIDDEN = re.compile(r"DESIGN(?: ?§|\.md)|\.\.[/\\]shared\b|STYLE\.md|FIELD[-]NOTES")


def _files() -> list[Path]:
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard"],
                            capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / f for f in listed
            if (ROOT / f).is_file() and Path(f).suffix in TEXT_SUFFIXES
            and not f.endswith("package-lock.json") and Path(f).name != "test_docs.py"]


def _headings() -> set[str]:
    found = set()
    for line in ARCHITECTURE.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip()
            found.add(title)
            found.add(re.sub(r"^\d+\.\s*", "", title))  # "2. Storage layout" -> "Storage layout"
    return found


def _exists(ref: str) -> bool:
    ref = ref.rstrip(".")
    if any(ch in ref for ch in "{}*<>") or ref.startswith("visionpipe/v1"):
        return True  # a pattern (`models/{projectId}/...`) or a route, not a file
    path = ROOT / ref
    return path.exists() or path.with_suffix("").exists()


def test_no_reference_to_files_outside_the_repository() -> None:
    bad = [f"{f.relative_to(ROOT)}: {m.group(0)}" for f in _files()
           for m in FORBIDDEN.finditer(f.read_text(errors="replace"))]
    assert not bad, "\n".join(bad)


def test_cited_paths_exist() -> None:
    bad = []
    for f in _files():
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            for ref in PATH.findall(line):
                if not _exists(ref):
                    bad.append(f"{f.relative_to(ROOT)}:{n}: {ref}")
    assert not bad, "dead file references:\n" + "\n".join(bad)


def test_markdown_links_resolve() -> None:
    bad = []
    for f in _files():
        if f.suffix != ".md":
            continue
        for target in MD_LINK.findall(f.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (f.parent / target).exists():
                bad.append(f"{f.relative_to(ROOT)}: {target}")
    assert not bad, "\n".join(bad)


def test_cited_sections_of_the_contract_exist() -> None:
    headings = _headings()
    cited = {(f.relative_to(ROOT), name) for f in _files()
             for name in SECTION.findall(f.read_text(errors="replace").replace("\n", " "))}
    assert cited, "nothing cites the contract by section: the pattern is out of date"
    bad = [f"{f}: {name!r}" for f, name in sorted(cited)
           if not any(h == name or h.startswith(name + " ") for h in headings)]
    assert not bad, "sections not in docs/ARCHITECTURE.md:\n" + "\n".join(bad)


@pytest.mark.parametrize("target", ["setup", "up", "down", "demo", "test", "test-fast", "bench",
                                    "lint"])
def test_make_targets_the_docs_name_have_rules(target: str) -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"no rule for make {target}"
