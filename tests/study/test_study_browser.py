"""The study page in a real headless Chromium: answer every pair by keyboard, export, analyze.

Needs Debian's ``chromium`` and ``chromium-driver`` (same version, so the driver always fits
the browser) and the ``selenium`` package. Skipped when they are missing, unless
CRAFT_REQUIRE_BROWSER=1 (CI sets it), where their absence is a failure.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from craft.study.analyze import analyze_study
from craft.study.export import export_study
from craft.study.schema import read_answers, read_key
from craft.study.stats import cohen_kappa
from tests.study.helpers import DESCRIPTION, METHOD_A, METHOD_B, write_samples

LABELS = ["normal", "effusion", "nodule"]
N_PER_LABEL = 4


try:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - the browser fixture skips (or fails) then
    pass

# The `browser` fixture (headless Chromium, its downloads folder) is in tests/conftest.py.


def wait_for_download(folder: Path, suffix: str, timeout: float = 20) -> Path:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        done = [p for p in folder.iterdir() if p.suffix == suffix]
        if done and not any(p.suffix == ".crdownload" for p in folder.iterdir()):
            return done[0]
        time.sleep(0.1)
    raise AssertionError(f"no {suffix} download in {folder}: {list(folder.iterdir())}")


def body(driver, name: str) -> str:
    return driver.find_element(By.TAG_NAME, "body").get_attribute(f"data-{name}")


# Keys a rater may press for each choice (the page accepts both rows).
KEYS = {
    "left": ["1", Keys.ARROW_LEFT],
    "neither": ["2", Keys.ARROW_DOWN],
    "right": ["3", Keys.ARROW_RIGHT],
}


def rate(driver, rater: str, plan: dict[str, tuple[str, str]]) -> None:
    """Type the rater id, then answer every pair in page order with keyboard shortcuts only."""
    wait = WebDriverWait(driver, 10)
    wait.until(lambda d: body(d, "ready") == "1")
    field = driver.find_element(By.ID, "rater")
    field.clear()
    field.send_keys(rater, Keys.ENTER)  # Enter leaves the field, so keys answer again
    order = []
    for step in range(len(plan)):
        pid = body(driver, "current")
        order.append(pid)
        finding, plausibility = plan[pid]
        ActionChains(driver).send_keys(KEYS[finding][step % 2]).perform()
        ActionChains(driver).send_keys(KEYS[plausibility][(step + 1) % 2]).perform()
        wait.until(lambda d, n=step + 1: body(d, "answered") == str(n))
    assert order == list(plan)  # pairs come in page order, one after another
    assert driver.find_element(By.ID, "progress-text").text.startswith(f"{len(plan)} / {len(plan)}")


def export_json(driver, folder: Path) -> Path:
    for p in folder.iterdir():
        p.unlink()
    ActionChains(driver).send_keys("j").perform()
    return wait_for_download(folder, ".json")


def test_page_in_chromium_round_trips_answers(browser, tmp_path):
    a = write_samples(tmp_path / "a.h5", METHOD_A, labels=LABELS, n_per_label=N_PER_LABEL)
    b = write_samples(tmp_path / "b.h5", METHOD_B, labels=LABELS, n_per_label=N_PER_LABEL)
    page = export_study(
        "phantom-cxr",
        DESCRIPTION,
        LABELS,
        a,
        b,
        METHOD_A,
        METHOD_B,
        tmp_path / "study",
        N_PER_LABEL,
        seed=11,
    )
    key_path = page.parent / "key.json"
    key = read_key(key_path)
    ids = [p.pair_id for p in key.pairs]
    sides = ["left", "right", "neither"]
    # two raters' scripted answers (by screen side), varied so every outcome occurs
    plans = {
        "dr-one": {pid: (sides[i % 3], sides[(i // 3) % 3]) for i, pid in enumerate(ids)},
        "dr-two": {pid: (sides[(i + i // 4) % 3], sides[(2 * i) % 3]) for i, pid in enumerate(ids)},
    }

    browser.get(page.as_uri())
    assert "preference study" in browser.title.lower()
    assert METHOD_A not in browser.page_source.lower()
    # nothing was fetched: images are data: URIs, CSS and JS inline
    fetched = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert [u for u in fetched if not u.startswith("data:")] == []
    assert browser.execute_script(
        "return Array.from(document.images).every(i => i.complete && i.naturalWidth === 256)"
    )

    files = {}
    for n, (rater, plan) in enumerate(plans.items()):
        if n:  # the next rater starts afresh in the same browser
            browser.find_element(By.ID, "clear").click()
            browser.switch_to.alert.accept()
            assert body(browser, "answered") == "0"
            assert browser.find_element(By.ID, "rater").get_attribute("value") == ""
            browser.refresh()  # and the cleared state is what the browser kept
            WebDriverWait(browser, 10).until(lambda d: body(d, "ready") == "1")
            assert body(browser, "answered") == "0"
        rate(browser, rater, plan)
        if n == 0:  # answers survive a reload (localStorage)
            browser.refresh()
            WebDriverWait(browser, 10).until(lambda d: body(d, "ready") == "1")
            assert body(browser, "answered") == str(len(ids))
            assert browser.find_element(By.ID, "rater").get_attribute("value") == rater
        files[rater] = export_json(browser, browser.downloads)
        files[rater] = files[rater].rename(tmp_path / files[rater].name)
    # the CSV export of the last rater holds the same answers
    ActionChains(browser).send_keys("c").perform()
    csv_file = wait_for_download(browser.downloads, ".csv")

    # the exported files hold exactly what was typed
    for rater, plan in plans.items():
        exported = read_answers(files[rater])
        assert exported.study_id == key.study_id and exported.rater == rater
        assert {x.pair_id: (x.finding, x.plausibility) for x in exported.answers} == plan
        assert files[rater].name == f"answers-{rater}-{key.study_id}.json"
    from_csv = read_answers(csv_file)
    assert from_csv.answers == read_answers(files["dr-two"]).answers

    # analyze reproduces the answers: unblind the plans by hand and compare every count
    summary = analyze_study(list(files.values()), key_path, tmp_path / "out")
    for q, column in (("finding", 0), ("plausibility", 1)):
        outcomes = {r: [] for r in plans}
        for rater, plan in plans.items():
            for pair in key.pairs:
                choice = plan[pair.pair_id][column]
                won = "neither" if choice == "neither" else ("a" if choice == pair.a_side else "b")
                outcomes[rater].append((pair.label, won))
        pooled = Counter(w for r in outcomes.values() for _, w in r)
        got = summary["questions"][q]["overall"]
        assert (got["wins_a"], got["wins_b"], got["neither"]) == (
            pooled["a"],
            pooled["b"],
            pooled["neither"],
        )
        for label in LABELS:
            per = Counter(w for r in outcomes.values() for lab, w in r if lab == label)
            got = summary["questions"][q]["per_label"][label]
            assert (got["wins_a"], got["wins_b"], got["neither"]) == (
                per["a"],
                per["b"],
                per["neither"],
            )
        kappa = cohen_kappa(*([w for _, w in outcomes[r]] for r in plans))
        assert kappa is not None
        assert summary["questions"][q]["agreement"]["value"] == pytest.approx(kappa)
    assert summary["n_raters"] == 2 and summary["n_pairs_answered"] == len(ids)
    assert json.loads((tmp_path / "out" / "study_summary.json").read_text()) == summary
