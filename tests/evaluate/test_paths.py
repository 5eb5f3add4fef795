"""craft.evaluate.paths: a reward method's path, its points, its journal and its resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml

from craft.config import validate_config
from craft.errors import CraftError
from craft.evaluate import paths as P
from craft.paths import Layout
from tests.conftest import REPO


def test_a_point_takes_the_oracle_the_out_of_family_scores_and_the_mean_label_distances():
    fid = {"fd": 9.0, "fd__a": 1.0, "fd__b": 3.0, "kid__a": 0.2, "kid__b": math.nan}
    cas = {"siglip": {"cas_mean__siglip": 0.4, "tail_rate__siglip": 0.25, "other": 1.0}}
    oracle = {"oracle_label_agreement": 0.7, "oracle_distribution_shift": 0.3, "x": 5}
    point = P.point_metrics(["a", "b"], fid, cas, oracle)
    assert point == {
        "oracle_label_agreement": 0.7,
        "oracle_distribution_shift": 0.3,
        "cas_mean__siglip": 0.4,
        "tail_rate__siglip": 0.25,
        "realism_fd": 2.0,  # per label, not the whole set's 9
        "realism_kid": 0.2,  # a label without a value is left out of the mean
    }
    assert "oracle_label_agreement" not in P.point_metrics(["a"], fid, cas, None)


def test_the_path_metrics_name_every_point_and_rank_realism_against_the_oracle():
    shift = [0.30, 0.32, 0.35, 0.40]
    points = {
        s: {"oracle_distribution_shift": d, "realism_fd": 10 * d, "realism_kid": -d}
        for s, d in zip((0.0, 0.5, 1.0, 1.5), shift, strict=True)
    }
    m = P.path_metrics(points)
    assert m["path_realism_fd__s0.5"] == pytest.approx(3.2)
    assert m["path_oracle_distribution_shift__s1.5"] == 0.40
    assert m["realism_oracle_spearman__fd"] == pytest.approx(1.0)  # the same order
    assert m["realism_oracle_spearman__kid"] == pytest.approx(-1.0)  # the reverse
    points[1.0]["realism_fd"] = 2.0  # one point out of order
    assert P.path_metrics(points)["realism_oracle_spearman__fd"] == pytest.approx(0.4)
    # without an oracle (real data) no rank correlation; under three points none either
    real = {s: {"realism_fd": p["realism_fd"]} for s, p in points.items()}
    assert not any(k.startswith("realism_oracle") for k in P.path_metrics(real))
    assert math.isnan(P.spearman([1.0, 2.0], [1.0, 2.0]))


def test_the_journal_keeps_this_digests_points_and_skips_a_line_cut_short(tmp_path):
    journal = tmp_path / P.POINTS
    P._append_point(journal, "d1", 0.0, {"a": 1.0, "b": math.nan})
    P._append_point(journal, "old", 0.5, {"a": 9.0})
    P._append_point(journal, "d1", 1.0, {"a": 2.0})
    with journal.open("a") as f:
        f.write('{"digest": "d1", "scale": 1.5, "metr')  # killed while writing
    points = P.read_points(journal, "d1")
    assert sorted(points) == [0.0, 1.0] and points[1.0] == {"a": 2.0}
    assert math.isnan(points[0.0]["b"])


@pytest.fixture
def cfg(tmp_path):
    data = yaml.safe_load((REPO / "config.yaml").read_text())
    data["results"] = str(tmp_path / "results")
    return validate_config(data)


def _fake_point(scale):
    return {"oracle_distribution_shift": 0.3 + scale / 10, "realism_fd": scale, "agree": scale}


def test_a_killed_path_resumes_after_its_last_finished_point(cfg, tmp_path, monkeypatch):
    lay = Layout(cfg.results)
    runs, sampled = [], []
    monkeypatch.setattr(P, "_run_point", lambda c, lay, m, k, s: runs.append(k) or _fake_point(0))

    def sample(c, lay, m, k, s, scale, folder, digest, threads, fail_at=None):
        folder.mkdir(parents=True, exist_ok=True)  # a killed scale left its folder
        if scale == fail_at:
            raise KeyboardInterrupt  # the job is killed while it samples this scale
        sampled.append(scale)
        return _fake_point(scale)

    monkeypatch.setattr(P, "_sampled_point", lambda *a: sample(*a, fail_at=1.5))
    out = lay.metrics("phantom-cxr", "craft", 0, "path")
    with pytest.raises(KeyboardInterrupt):
        P.reward_path(cfg, lay, "phantom-cxr", "craft", 0, out, "dig")
    assert runs == ["lora-enriched", "craft"] and sampled == [0.5] and not out.exists()
    assert not (out.parent / "path" / "scale-0.5").exists()  # a finished point's samples go

    monkeypatch.setattr(P, "_sampled_point", sample)
    metrics = P.reward_path(cfg, lay, "phantom-cxr", "craft", 0, out, "dig")
    assert runs == ["lora-enriched", "craft"] and sampled == [0.5, 1.5]  # nothing twice
    written = json.loads(out.read_text())["metrics"]
    assert written == pytest.approx(metrics)
    assert written["path_agree__s1.5"] == 1.5 and written["path_agree__s0.5"] == 0.5
    # another spec (another digest) starts the path anew
    P.reward_path(cfg, lay, "phantom-cxr", "craft", 0, out, "other")
    assert sampled == [0.5, 1.5, 0.5, 1.5] and len(runs) == 4


def test_a_start_asked_with_other_prompts_is_sampled_at_scale_zero(cfg, monkeypatch):
    """generic-reward asks with the label prompt, its start lora-enriched with the enriched
    ones: its scale 0 is the start drawn with its own plan, not lora-enriched's samples."""
    lay = Layout(cfg.results)
    runs, sampled = [], []
    monkeypatch.setattr(P, "_run_point", lambda c, lay, m, k, s: runs.append(k) or _fake_point(1))

    def sample(c, lay, m, k, s, scale, folder, digest, threads):
        folder.mkdir(parents=True)
        sampled.append(scale)
        return _fake_point(scale)

    monkeypatch.setattr(P, "_sampled_point", sample)
    out = lay.metrics("phantom-cxr", "generic-reward", 0, "path")
    P.reward_path(cfg, lay, "phantom-cxr", "generic-reward", 0, out, "dig")
    assert runs == ["generic-reward"] and sampled == [0.0, 0.5, 1.5]
    assert [p.name for p in (out.parent / "path").iterdir()] == [P.POINTS]  # no samples kept


def test_only_reward_methods_have_paths_and_scales_must_hold_both_ends(cfg, tmp_path):
    lay = Layout(cfg.results)
    with pytest.raises(CraftError, match="kind lora: paths are of reward methods"):
        P.reward_path(cfg, lay, "phantom-cxr", "lora", 0, tmp_path / "m.json", "d")
    data = yaml.safe_load((REPO / "config.yaml").read_text())
    data["evaluation"] = {"paths": {"scales": [0.5, 1]}}
    with pytest.raises(CraftError, match=r"must hold 0 \(the start\) and 1"):
        validate_config(data)
    data["evaluation"] = {"paths": {"scales": [1, 0, 2]}}
    assert validate_config(data).evaluation.paths.scales == [0.0, 1.0, 2.0]


def test_the_realism_measure_scores_blurred_images_as_less_real(derm_data, tmp_path):
    """realism_fd of the fidelity stage's features: fresh phantoms blurred sit further from
    the real test images of their label than fresh ones do, and more blur further still."""
    from scipy.ndimage import uniform_filter

    from craft.data.phantoms import draw_batch
    from craft.evaluate.fidelity import fidelity
    from craft.evaluate.settings import FidelityConfig
    from tests.evaluate.conftest import DERM, DERM_LABELS, write_samples

    lab = [x for x in DERM_LABELS for _ in range(16)]
    fresh, _ = draw_batch(DERM, lab, 11, 32)
    codes = np.array([DERM_LABELS.index(x) for x in lab])
    realism = []
    for size in (1, 3, 5):
        images = uniform_filter(fresh.astype(float), size=(1, size, size, 1)).round()
        samples = write_samples(tmp_path / f"s{size}.h5", images.astype(np.uint8), codes,
                                DERM_LABELS)  # fmt: skip
        fid = fidelity(FidelityConfig(), derm_data, samples, tmp_path / f"m{size}.json", DERM,
                       "m", 0, "d")  # fmt: skip
        realism.append(P.point_metrics(DERM_LABELS, fid, {}, None)["realism_fd"])
    assert realism[0] < realism[1] < realism[2], realism
