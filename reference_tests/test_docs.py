"""docs/spec.md is the contract the code cites: every `docs/spec.md §N` in the code names a section it has."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def spec_sections():
    text = (ROOT / "docs" / "spec.md").read_text()
    return set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", text, flags=re.M))


def test_spec_has_its_sections():
    assert {"1", "2", "2.1", "2.2", "2.3", "3", "3.1", "3.2", "3.3", "4", "5", "6", "7"} <= spec_sections()


def test_every_spec_citation_names_a_section():
    sections, bad, n = spec_sections(), [], 0
    for folder in ("qz", "scripts", "reference_tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for line_no, line in enumerate(path.read_text().splitlines(), 1):
                for ref in re.findall(r"docs/spec\.md §(\d+(?:\.\d+)?)", line):
                    n += 1
                    if ref not in sections:
                        bad.append(f"{path.relative_to(ROOT)}:{line_no}: §{ref}")
    assert n > 50 and not bad, bad
