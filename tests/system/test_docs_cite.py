"""The repository explains itself: what the docs and the code cite is in the repository.

Comments cite docs/design.md and the project's own files, never a contract kept
elsewhere, and every file path the README, the docs, the runbooks or a comment
names exists, so a move that forgets its citations fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PATH = re.compile(
    r"(?<![\w/.])(?:dispatcher|tests|ops|docs|scripts)/[\w/.-]*\w\.(?:py|md|yml|json|toml)(?![\w.])"
)
GENERATED = ("ops/bench/results/",)
OUTSIDE = re.compile(r"\bSPEC\b|\.\./shared|STYLE\.md")


def _sources() -> list[Path]:
    texts = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "ops").rglob("*.md")]
    code = [*(ROOT / "dispatcher").rglob("*.py"), *(ROOT / "tests").rglob("*.py")]
    return [p for p in texts + code if p.is_file()]


def test_every_cited_path_exists() -> None:
    missing = []
    for source in _sources():
        for cited in PATH.findall(source.read_text(encoding="utf-8")):
            if cited.startswith(GENERATED) or "*" in cited:
                continue
            if not (ROOT / cited).exists():
                missing.append(f"{source.relative_to(ROOT)}: {cited}")
    assert not missing, "\n".join(missing)


def test_nothing_cites_a_contract_outside_the_repository() -> None:
    here = Path(__file__).resolve()
    found = [
        f"{source.relative_to(ROOT)}:{n}: {line.strip()}"
        for source in _sources()
        if source != here
        for n, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not found, "\n".join(found)


def test_the_design_doc_has_the_sections_the_code_cites() -> None:
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    sections = {int(n) for n in re.findall(r"^## (\d+)\. ", design, re.MULTILINE)}
    cited = set()
    for source in _sources():
        text = source.read_text(encoding="utf-8")
        for match in re.finditer(r"docs/design\.md,? sections? ([\d, and]+)", text):
            cited |= {int(n) for n in re.findall(r"\d+", match.group(1))}
    assert cited, "nothing cites docs/design.md by section"
    assert cited <= sections, f"cited but missing: {sorted(cited - sections)}"
