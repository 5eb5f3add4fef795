"""The documentation: the generated configuration reference is current and complete, the site
builds strictly (every internal link and anchor resolves), and the README stays a short
front page whose links all lead somewhere."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from craft.config import CraftConfig
from craft.config_reference import reference_markdown, sections
from tests.conftest import BIN, REPO

DOCS = REPO / "docs"


def test_configuration_reference_is_current():
    committed = (DOCS / "configuration.md").read_text()
    assert committed == reference_markdown(), (
        "docs/configuration.md is stale: run `craft config reference --out docs/configuration.md`"
    )


def _schema_fields() -> set[tuple[str, str]]:
    """(model title, field) for every object in the JSON schema, walked independently of the
    generator: a config node the generator's walk misses shows up here."""
    schema = CraftConfig.model_json_schema()
    out = {(schema["title"], name) for name in schema["properties"]}
    for d in schema.get("$defs", {}).values():
        if d.get("type") == "object" and "properties" in d:
            out |= {(d["title"], name) for name in d["properties"]}
    return out


def test_configuration_reference_covers_every_schema_field():
    page = reference_markdown()
    covered = set()
    for s in sections():
        for name in s.model.model_fields:
            covered.add((s.model.__name__, name))
    missing = sorted(_schema_fields() - covered)
    assert not missing, f"fields in the schema but not in the reference: {missing}"
    # every field is a row of the page, under its section (a row per field, none dropped)
    rows = re.findall(r"^\| `([a-z_0-9]+)` \|", page, flags=re.M)
    assert len(rows) == sum(len(s.model.model_fields) for s in sections())
    # nested nodes are found through mappings and tagged unions
    titles = [s.title for s in sections()]
    assert "`methods.{name}.align`" in titles
    assert "`modalities.{name}.source` (kind: manifest)" in titles
    assert "`cas.evaluators.{name}.train.architecture`" in titles


def test_reference_rows_carry_type_default_and_description():
    page = reference_markdown()
    row = next(line for line in page.splitlines() if line.startswith("| `tolerance_se` |"))
    cells = [c.strip() for c in re.split(r"(?<!\\)\|", row.strip("|"))]
    assert cells[1] == "float \\| null"
    assert cells[2] == "`null`"
    assert "paired standard errors" in cells[3]
    undocumented = [line for line in page.splitlines() if line.rstrip().endswith("|  |")]
    assert not undocumented, f"fields without a description: {undocumented}"


@pytest.mark.skipif(shutil.which("mkdocs", path=str(BIN)) is None, reason="mkdocs not installed")
def test_docs_site_builds_strictly(tmp_path):
    """`mkdocs build --strict`: a broken link, a missing anchor or a page left out of the nav
    fails the build (mkdocs.yml's validation settings make each a warning)."""
    result = subprocess.run(
        [str(BIN / "mkdocs"), "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=REPO,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "configuration" / "index.html").is_file()
    html = (tmp_path / "site" / "configuration" / "index.html").read_text()
    assert "tolerance_se" in html


def test_readme_is_a_short_front_page_with_live_links():
    readme = (REPO / "README.md").read_text()
    lines = readme.splitlines()
    assert len(lines) <= 125, f"README.md has {len(lines)} lines; move detail into docs/"
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        assert (REPO / target).exists(), f"README links to {target}, which does not exist"
    # the front page names both commands and how to reach every config field
    for needed in ("make run", "make test", "docs/configuration.md", "craft init"):
        assert needed in readme, f"README.md no longer mentions {needed}"


def test_cli_writes_the_reference(tmp_path):
    from typer.testing import CliRunner

    from craft.cli import app

    out = tmp_path / "configuration.md"
    result = CliRunner().invoke(app, ["config", "reference", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text() == reference_markdown()


def documented_metrics() -> list[re.Pattern]:
    """The metric names docs/evaluation.md's tables document (first column, in backticks;
    `{evaluator}`-style placeholders match any name part), as patterns."""
    names = []
    for line in (DOCS / "evaluation.md").read_text().splitlines():
        if line.startswith("| `"):
            first = re.split(r"(?<!\\)\|", line)[1]
            names += re.findall(r"`([^`]+)`", first)
    return [
        re.compile(re.sub(r"\\\{[a-z_]+\\\}", r"[A-Za-z0-9_.-]+", re.escape(n)) + "$")
        for n in names
    ]


def undocumented(metrics) -> list[str]:
    """The metric names (as summary.csv writes them) that docs/evaluation.md does not cover."""
    patterns = documented_metrics()
    return sorted({m for m in metrics if not any(p.match(m) for p in patterns)})


def test_the_metric_check_can_fail():
    assert undocumented(["cas_mean__clip", "oracle_label_agreement__effusion"]) == []
    assert undocumented(["cas_mean__clip", "made_up_metric"]) == ["made_up_metric"]


def test_the_license_and_the_citation_say_what_pyproject_says():
    """LICENSE is the license pyproject declares; CITATION.cff names the same license and
    version, so a release cannot bump one and forget the other."""
    import tomllib

    import yaml

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"]["text"] == "Apache-2.0"
    text = (REPO / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "END OF TERMS AND CONDITIONS" in text
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert cff["license"] == project["license"]["text"]
    assert cff["version"] == project["version"]
    import craft

    assert craft.__version__ == project["version"]  # the release every output records
    assert "2605.12650" in str(cff["references"])
