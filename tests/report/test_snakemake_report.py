"""`snakemake --report report.zip`: every result the rules flag for it has a caption written
for a reader and a category, and the zip holds them with their captions rendered."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import zipfile

import pytest

from tests.conftest import REPO


def report_flags() -> list[tuple[str, str, dict]]:
    """(rules file, output name, keyword arguments) of every report(...) in rules/*.smk."""
    flags = []
    for smk in sorted((REPO / "rules").glob("*.smk")):
        text = smk.read_text()
        for m in re.finditer(r"^\s+(\w+)=report\(", text, re.M):
            start = m.end() - len("report(")
            depth, i = 0, start
            while True:  # the call's closing parenthesis
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
                if depth == 0 and text[i - 1] == ")":
                    break
            call = ast.parse(text[start:i], mode="eval").body
            kwargs = {k.arg: k.value for k in call.keywords}
            flags.append((smk.name, m.group(1), kwargs))
    return flags


def test_every_report_output_has_a_caption_file_and_a_category():
    flags = report_flags()
    names = {(f, o) for f, o, _ in flags}
    assert {("report.smk", "summary"), ("report.smk", "claim"), ("report.smk", "figures")} <= names
    assert {("evaluate.smk", "figure")} <= names and len(flags) >= 5
    for smk, output, kwargs in flags:
        assert "category" in kwargs, (smk, output)
        caption = kwargs.get("caption")
        assert isinstance(caption, ast.Constant), (smk, output, "no caption")
        path = REPO / "rules" / caption.value  # relative to the rules file
        text = path.read_text()
        words = re.findall(r"[A-Za-z]{3,}", re.sub(r"\{[{%].*?[%}]\}", "", text))
        assert len(words) >= 40, (path, "a caption a reader can learn from")


def results_of(zip_path) -> tuple[dict, dict, list[str]]:
    """(results, categories, names in the zip) of a `snakemake --report` zip."""
    with zipfile.ZipFile(zip_path) as z:
        names = z.namelist()
        page = z.read(next(n for n in names if n.endswith("report.html"))).decode()
    results = json.loads(re.search(r"var results = (\{.*?\});\s*</script>", page, re.S)[1])
    categories = json.loads(re.search(r"var categories = (\{.*?\});\s*</script>", page, re.S)[1])
    return results, categories, names


@pytest.mark.slow
def test_snakemake_report_zip_holds_every_result_captioned(tiny_site, env, tmp_path):
    """On a finished tiny workflow (shared with the pooling test): the summary, the claim, the
    page's figures (one sample grid per method) and each run's audit and memorization figure,
    each captioned, in its category."""
    work = tiny_site("south", [1, 2])
    zip_path = tmp_path / "report.zip"
    cmd = ["snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(work)]
    proc = subprocess.run(
        [*cmd, "--report", str(zip_path)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results, categories, names = results_of(zip_path)
    by_name = {}
    for path, r in results.items():
        by_name.setdefault(r["name"], []).append(r)
        # every result is in the zip, with its caption rendered (wildcards filled in)
        assert f"report/{r['data_uri']}" in names, r["data_uri"]
        assert len(r["caption"]) > 200 and "{{" not in r["caption"], (path, r["caption"])
    in_categories = {p for subs in categories.values() for ps in subs.values() for p in ps}
    assert in_categories == set(results)
    assert set(categories) == {"Summary", "Report figures", "Checklist audit", "Memorization"}
    assert set(categories["Report figures"]) >= {"Sample grids", "Key metrics", "CAS distributions"}
    grids = sorted(
        r["name"] for p, r in results.items() if p in categories["Report figures"]["Sample grids"]
    )
    assert grids == ["grid-phantom-cxr-lora.png", "grid-phantom-cxr-zero-shot.png"]
    assert "Generated images of one method" in by_name["grid-phantom-cxr-lora.png"][0]["caption"]
    assert "claim table" in by_name["claim.csv"][0]["caption"]
    assert len(by_name["summary.csv"]) == 1
    # one audit and one memorization figure per run (2 methods x 2 seeds), the run named
    assert len(by_name["audit.png"]) == len(by_name["memorization-pairs.png"]) == 4
    runs = {(r["labels"]["method"], r["labels"]["seed"]) for r in by_name["audit.png"]}
    assert runs == {(k, s) for k in ("zero-shot", "lora") for s in ("1", "2")}
    assert all(
        f"method {r['labels']['method']}, seed {r['labels']['seed']}" in r["caption"]
        for r in by_name["audit.png"]
    )
