"""docs/consul-api.md is the project's reference of the Consul behaviours it relies on: every
section cited in the code, tests and docs exists there, and the repository stands alone.

A citation is ``§`` followed by a section number. In prose it names the file,
``consul-api.md §3.6``; at the end of a test's ``def`` line the short tag ``[§8.22]`` means the
same section of docs/consul-api.md, and a file that uses tags says so in its docstring, so every
file with a citation names docs/consul-api.md somewhere. A section is a numbered heading of
docs/consul-api.md (``## 5.``, ``### 1.6``) or an item of a numbered list under one: item 22 of
the list under ``## 8.`` is §8.22.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from consulresults.devserver.connlimit import TOO_MANY_CONNECTIONS_TEXT

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "consul-api.md"
CITING = ("consulresults/", "tests/", "bench/", "scripts/", "docs/", "README.md")
CITATION = re.compile(r"§(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^#{2,6} (\d+(?:\.\d+)*)\.? ")
LIST_ITEM = re.compile(r"^(\d+)\. ")
# Spelled in parts so that this file does not trip its own check: the reference the citations
# were first written against lived outside the repository.
FORBIDDEN = ("../" + "shared", "consul-http-" + "semantics")
NOT_SOURCE = {".git", ".venv", "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".nox"}


def repository_files() -> list[Path]:
    """Tracked files and new ones not ignored (so no virtualenv, caches or build output)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout
        return [
            path
            for path in ROOT.rglob("*")
            if path.is_file()
            and not NOT_SOURCE.intersection(path.relative_to(ROOT).parts)
            and not any(part.endswith(".egg-info") for part in path.parts)
        ]
    return [ROOT / name for name in listed.split("\0") if name and (ROOT / name).is_file()]


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def citing_files() -> list[Path]:
    return [
        path
        for path in repository_files()
        if relative(path).startswith(CITING) and path.suffix not in {".pyc", ".png"}
    ]


def reference_sections() -> list[str]:
    """Section numbers of docs/consul-api.md in order: headings and numbered list items."""
    sections: list[str] = []
    current = None
    fenced = False
    for line in REFERENCE.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        if heading := HEADING.match(line):
            current = heading.group(1)
            sections.append(current)
        elif current and (item := LIST_ITEM.match(line)):
            sections.append(f"{current}.{item.group(1)}")
    return sections


def citations() -> list[tuple[str, str]]:
    """(``file:line``, section) for every citation in the citing files."""
    found = []
    for path in citing_files():
        text = path.read_text(errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            found += [(f"{relative(path)}:{number}", m.group(1)) for m in CITATION.finditer(line)]
    return found


def test_the_reference_numbers_its_sections_once_each():
    sections = reference_sections()
    duplicates = sorted({s for s in sections if sections.count(s) > 1})
    assert not duplicates, f"numbered twice in docs/consul-api.md: {duplicates}"
    for expected in ("1.6", "2.6", "3.6", "4.4", "5", "6", "7", "9"):
        assert expected in sections
    assert [s for s in sections if s.startswith("8.")] == [f"8.{n}" for n in range(1, 26)]


def test_every_cited_section_exists_in_the_reference():
    found = citations()
    assert len(found) >= 50, "the citations in the tests were not found: is the regex right?"
    sections = set(reference_sections())
    missing = [f"{where}: §{section}" for where, section in found if section not in sections]
    assert not missing, "cited but not in docs/consul-api.md:\n" + "\n".join(missing)


def test_every_file_with_citations_names_the_reference():
    """A bare ``[§8.22]`` is unambiguous only where the file says which document it means."""
    unnamed = sorted(
        {
            where.split(":")[0]
            for where, _ in citations()
            if "consul-api.md" not in (ROOT / where.split(":")[0]).read_text(errors="replace")
            and not where.startswith("docs/consul-api.md:")
        }
    )
    assert not unnamed, f"these files cite sections without naming docs/consul-api.md: {unnamed}"


def test_the_dev_server_section_of_the_readme_links_the_reference():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## The dev server\n", 1)[1].split("\n## ", 1)[0]
    assert "(docs/consul-api.md)" in section


def test_the_reference_states_what_the_dev_server_answers_past_the_connection_limit():
    """The literal wire text of §1.6 and §7 is the dev server's, byte for byte."""
    text = REFERENCE.read_text()
    body = TOO_MANY_CONNECTIONS_TEXT.decode()
    assert body.rstrip("\n") in text
    assert f"Content-Length: {len(body)}" in text
    for needle in ("limits.http_max_conns_per_client", "Connection: close"):
        assert needle in text
    assert '"HTTPMaxConnsPerClient": 200' in text


def test_nothing_points_outside_the_repository():
    offending = sorted(
        f"{relative(path)}: {needle}"
        for path in repository_files()
        for needle in FORBIDDEN
        if needle.encode() in path.read_bytes()
    )
    assert not offending, "the repository must stand alone:\n" + "\n".join(offending)
