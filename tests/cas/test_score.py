"""CAS validity on phantoms: it agrees with the oracle, real images sit in the middle, noise,
blank and wrong-label images fall in the tail, and gradients reach the pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from craft.cas import DIMENSIONS
from craft.cas.knowledge_view import prompt_texts
from craft.cas.reference import load_reference, silverman_bandwidth
from craft.cas.score import bootstrap_ci, cas_dimensions, read_scores, score_samples
from craft.data import oracle
from craft.data.phantoms import draw_batch
from craft.store import STR, atomic_h5, image_dataset, read_split
from tests.cas.conftest import PHANTOM
from tests.cas.knowledge_standin import CXR_LABELS
from tests.cas.phantom_sets import mixed_set


def _score(ev, ref, knowledge, images, requested, grad=False, prompts=None):
    if prompts is None:
        prompts = [prompt_texts(knowledge, r)[i % 3] for i, r in enumerate(requested)]
    if grad:
        return cas_dimensions(ev, images, requested, prompts, knowledge, ref)
    with torch.no_grad():
        return {
            k: v.numpy()
            for k, v in cas_dimensions(ev, images, requested, prompts, knowledge, ref).items()
        }


def test_trained_evaluator_knows_labels_and_checklist(trained_cxr):
    _, acc = trained_cxr
    print(f"reduced-budget evaluator: {acc}")
    assert acc["label_accuracy"] >= 0.85
    assert acc["checklist_accuracy"] >= 0.9
    # the contradictory phantoms it was trained on, fresh: mean and the weakest (kind, item)
    weakest = acc["weakest_hybrid_item"]
    assert 0.7 <= acc["hybrid_checklist_accuracy"] <= 1.0
    assert 0.0 <= weakest["accuracy"] <= acc["hybrid_checklist_accuracy"]
    assert weakest["kind_and_item"].split(" ")[0] in CXR_LABELS


def test_cas_agrees_with_the_oracle(cxr_evaluator, cxr_reference, cxr_knowledge):
    images, requested, kinds = mixed_set(PHANTOM, CXR_LABELS, 60)
    s = _score(cxr_evaluator, cxr_reference, cxr_knowledge, images, requested)
    passed = oracle.criterion_pass_rate(PHANTOM, images, requested)
    rho = spearmanr(s["cas"], passed).statistic
    table = {
        k: (
            round(float(passed[kinds == k].mean()), 2),
            round(float(s["cas"][kinds == k].mean()), 3),
        )
        for k in dict.fromkeys(kinds)
    }
    print(f"Spearman(CAS, oracle pass rate) = {rho:.3f}; (pass rate, CAS) by kind: {table}")
    assert rho >= 0.5
    # images showing another label's finding score clearly lower than correct ones
    correct, wrong = s["cas"][kinds == "correct"], s["cas"][kinds == "wrong_label"]
    assert correct.mean() - wrong.mean() >= 0.3
    assert np.median(wrong) < np.percentile(correct, 10)


def test_real_images_sit_in_the_middle_of_their_reference(
    cxr_evaluator, cxr_reference, cxr_knowledge, cxr_data
):
    ref = cxr_reference
    # by construction: each calibrated dimension of a real image is ~U(0, 1), so CAS of real
    # test images sits mid-range (a geometric mean of four: ~0.45), q percent of it below tau
    assert 0.3 <= ref.real_test_cas.mean() <= 0.62
    assert (ref.real_test_cas < ref.tau).mean() == pytest.approx(0.10, abs=0.02)
    val = read_split(cxr_data, "val")
    requested = [CXR_LABELS[i] for i in val.labels]
    s = _score(cxr_evaluator, ref, cxr_knowledge, val.images, requested)
    for dim in DIMENSIONS:  # val images are the calibration sample itself
        assert 0.4 <= s[dim].mean() <= 0.6, dim
    fresh, _ = draw_batch(PHANTOM, requested, 12345, 32)  # new real-like images
    s = _score(cxr_evaluator, ref, cxr_knowledge, fresh, requested)
    print(
        f"fresh phantoms: CAS mean {s['cas'].mean():.3f}, tail rate "
        f"{(s['cas'] < ref.tau).mean():.3f} (tau {ref.tau:.3f})"
    )
    assert abs(s["cas"].mean() - ref.real_test_cas.mean()) <= 0.1
    assert (s["cas"] < ref.tau).mean() <= 0.3


def test_noise_blank_and_other_labels_fall_in_the_tail(cxr_evaluator, cxr_reference, cxr_knowledge):
    rng = np.random.default_rng(7)
    n = 40
    requested = [CXR_LABELS[i % 4] for i in range(n)]
    sets = {
        "noise": rng.integers(0, 256, (n, 32, 32, 1), dtype=np.uint8),
        "blank": np.full((n, 32, 32, 1), 128, np.uint8),
        "black": np.zeros((n, 32, 32, 1), np.uint8),
    }
    other = [CXR_LABELS[(i + 1) % 4] for i in range(n)]  # drawn as the next label
    sets["other_label"] = draw_batch(PHANTOM, other, 3, 32)[0]
    rates = {}
    for kind, images in sets.items():
        s = _score(cxr_evaluator, cxr_reference, cxr_knowledge, images, requested)
        rates[kind] = float((s["cas"] < cxr_reference.tau).mean())
    print(f"tail rates: {rates} (tau {cxr_reference.tau:.3f})")
    assert min(rates["noise"], rates["blank"], rates["black"]) >= 0.9, rates
    assert rates["other_label"] >= 0.8, rates  # normal and nodule stay confusable at this budget


def test_gradients_reach_the_pixels_through_every_dimension(
    cxr_evaluator, cxr_reference, cxr_knowledge
):
    images, _ = draw_batch(PHANTOM, CXR_LABELS, 5, 32)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1).requires_grad_()
    s = _score(cxr_evaluator, cxr_reference, cxr_knowledge, x, CXR_LABELS, grad=True)
    for key in [*DIMENSIONS, *(f"{d}_raw" for d in DIMENSIONS), "cas"]:
        (g,) = torch.autograd.grad(s[key].sum(), x, retain_graph=True)
        assert torch.isfinite(g).all(), key
        assert g.abs().sum() > 0, key
    assert not any(p.requires_grad for p in cxr_evaluator.parameters())


def test_log_cas_keeps_a_gradient_far_from_real_images(cxr_evaluator, cxr_reference, cxr_knowledge):
    """Pure noise sits far below every real image on every dimension; the reward's log form
    still pulls each dimension back (log Phi does not saturate like Phi)."""
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.uniform(-1, 1, (4, 1, 32, 32)).astype(np.float32)).requires_grad_()
    s = _score(cxr_evaluator, cxr_reference, cxr_knowledge, x, CXR_LABELS, grad=True)
    assert (s["cas"] < cxr_reference.tau).all()
    (g,) = torch.autograd.grad(s["log_cas"].sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert torch.isfinite(s["log_cas"]).all()


def test_reward_log_cdf_turns_linear_far_below_the_real_images():
    """The reward's per-kernel log Phi: exact above z0, its tangent below (same value and
    slope at z0), so the gradient of an image 100 bandwidths out is that of one at z0, while
    plain log Phi's grows with the distance (the collapse it caused: a few outliers' gradients
    outweighed the batch)."""
    from craft.cas.reference import log_ndtr_linear_tail

    z0 = -3.0
    z = torch.tensor([2.0, 0.0, -2.9, -3.0, -3.1, -10.0, -100.0], dtype=torch.float64)
    z.requires_grad_()
    lin = log_ndtr_linear_tail(z, z0)
    exact = torch.special.log_ndtr(z)
    assert torch.equal(lin[:4], exact[:4])
    assert (lin[4:] > exact[4:]).all()  # the tangent of a concave function lies above it
    (g,) = torch.autograd.grad(lin.sum(), z)
    (g_exact,) = torch.autograd.grad(exact.sum(), z)
    slope = g_exact[3].item()
    assert slope == pytest.approx(3.2831, abs=1e-3)  # phi(-3) / Phi(-3)
    assert torch.allclose(g[4:], torch.full_like(g[4:], slope))
    assert g_exact[-1] > 30 * slope  # what the plain form gives an image 100 bandwidths out
    # continuous at z0
    below = log_ndtr_linear_tail(torch.tensor([z0 - 1e-6], dtype=torch.float64), z0)
    assert below.item() == pytest.approx(exact[3].item(), abs=1e-5)


def test_reward_form_bounds_each_images_gradient(cxr_evaluator, cxr_reference, cxr_knowledge):
    """With the reward's linear tail, a noise image's calibrated log dimensions are finite,
    above the plain log CDF, and equal to it for images inside the real distribution."""
    real_labels = [lab for lab in CXR_LABELS for _ in range(2)]
    images, _ = draw_batch(PHANTOM, real_labels, 2, 32)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    noise = torch.from_numpy(np.random.default_rng(2).uniform(-1, 1, (2, 1, 32, 32)))
    x = torch.cat([x, noise.float()])
    labels = [*real_labels, CXR_LABELS[0], CXR_LABELS[1]]
    prompts = [f"chest radiograph, {lab}" for lab in labels]
    with torch.no_grad():
        plain = cas_dimensions(cxr_evaluator, x, labels, prompts, cxr_knowledge, cxr_reference)
        reward = cas_dimensions(
            cxr_evaluator, x, labels, prompts, cxr_knowledge, cxr_reference, linear_below=-3.0
        )
    assert torch.isfinite(reward["log_cas"]).all()
    assert (reward["log_cas"] >= plain["log_cas"] - 1e-6).all()
    real = slice(0, 2 * len(CXR_LABELS))
    close = plain["log_cas"][real] > -3  # inside the real distribution: the same number
    assert close.any()
    assert torch.allclose(reward["log_cas"][real][close], plain["log_cas"][real][close], atol=1e-4)


def test_cas_reward_forms(cxr_evaluator, cxr_reference, cxr_knowledge):
    """The align stage's two reward forms: 'cas' is the evaluation's CAS itself, in [0, 1];
    'log-cas' the mean log calibrated dimension with the linear tail, finite for noise."""
    from craft.cas.score import cas_reward

    images, _ = draw_batch(PHANTOM, CXR_LABELS, 1, 32)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    x = torch.cat([x, torch.rand(1, 1, 32, 32) * 2 - 1])
    labels = [*CXR_LABELS, CXR_LABELS[0]]
    prompts = [f"chest radiograph, {lab}" for lab in labels]
    args = (cxr_evaluator, x, labels, prompts, cxr_knowledge, cxr_reference)
    with torch.no_grad():
        plain = cas_dimensions(*args)
        cas = cas_reward(*args, log=False)
        log_cas = cas_reward(*args, log=True)
        tailed = cas_dimensions(*args, linear_below=-3.0)
    assert torch.equal(cas, plain["cas"]) and ((cas >= 0) & (cas <= 1)).all()
    assert torch.equal(log_cas, tailed["log_cas"]) and torch.isfinite(log_cas).all()
    assert log_cas[-1] < log_cas[:-1].min()  # noise: the lowest reward


def test_scores_do_not_depend_on_the_batch(cxr_evaluator, cxr_reference, cxr_knowledge):
    images, _ = draw_batch(PHANTOM, CXR_LABELS * 2, 8, 32)
    req = CXR_LABELS * 2
    prompts = [prompt_texts(cxr_knowledge, r)[i % 3] for i, r in enumerate(req)]
    together = _score(cxr_evaluator, cxr_reference, cxr_knowledge, images, req, prompts=prompts)
    alone = np.concatenate(
        [
            _score(
                cxr_evaluator,
                cxr_reference,
                cxr_knowledge,
                images[i : i + 1],
                req[i : i + 1],
                prompts=prompts[i : i + 1],
            )["cas"]
            for i in range(len(req))
        ]
    )
    together = together["cas"]
    np.testing.assert_allclose(together, alone, atol=1e-4)


def test_reference_saves_and_loads(tmp_path, cxr_evaluator, cxr_reference, cxr_knowledge):
    path = cxr_reference.save(tmp_path / "ref.h5", config_digest="abc")
    loaded = load_reference(path, config_digest="abc")
    assert loaded.digest == cxr_reference.digest
    assert loaded.tau == cxr_reference.tau and loaded.label_names == CXR_LABELS
    images, _ = draw_batch(PHANTOM, CXR_LABELS, 9, 32)
    a = _score(cxr_evaluator, cxr_reference, cxr_knowledge, images, CXR_LABELS)
    b = _score(cxr_evaluator, loaded, cxr_knowledge, images, CXR_LABELS)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=1e-6)


def _write_samples(path, images, labels, prompts):
    with atomic_h5(path, "samples", "s", attrs={"labels": CXR_LABELS}) as f:
        image_dataset(f, "images", images)
        f.create_dataset("labels", data=np.asarray(labels, np.int64))
        f.create_dataset("prompts", data=prompts, dtype=STR)
        f.create_dataset("seeds", data=np.arange(len(labels)))
    return path


def test_score_samples_writes_resumes_and_reports(
    tmp_path, monkeypatch, cxr_evaluator, cxr_reference, cxr_knowledge
):
    import craft.cas.score as score_mod

    labels = [i % 4 for i in range(40)]
    images, _ = draw_batch(PHANTOM, [CXR_LABELS[i] for i in labels], 21, 32)
    images[-8:] = np.random.default_rng(0).integers(0, 256, images[-8:].shape, dtype=np.uint8)
    prompts = [prompt_texts(cxr_knowledge, CXR_LABELS[i])[0] for i in labels]
    samples = _write_samples(tmp_path / "samples.h5", images, labels, prompts)
    out = tmp_path / "cas-clip.h5"

    real = score_mod.cas_dimensions
    calls = []

    def dies_on_third_batch(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # a killed job
        return real(*a, **kw)

    monkeypatch.setattr(score_mod, "cas_dimensions", dies_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        score_samples(cxr_evaluator, samples, cxr_knowledge, cxr_reference, out, "d", batch_size=8)
    assert not out.exists() and out.with_name(out.name + ".partial").exists()
    monkeypatch.setattr(score_mod, "cas_dimensions", real)
    metrics = score_samples(
        cxr_evaluator,
        samples,
        cxr_knowledge,
        cxr_reference,
        out,
        "d",
        batch_size=8,
        phantom=PHANTOM,
        n_boot=200,
    )
    resumed = read_scores(out)

    fresh_out = tmp_path / "fresh" / "cas-clip.h5"
    score_samples(
        cxr_evaluator, samples, cxr_knowledge, cxr_reference, fresh_out, "d", batch_size=40
    )
    fresh = read_scores(fresh_out)
    for key in fresh:
        np.testing.assert_allclose(resumed[key], fresh[key], atol=1e-4)
    assert set(fresh) == {
        "labels",
        "cas",
        "log_cas",
        "tail",
        *DIMENSIONS,
        *(f"{d}_raw" for d in DIMENSIONS),
    }
    np.testing.assert_array_equal(fresh["tail"], fresh["cas"] < cxr_reference.tau)
    assert fresh["tail"][-8:].all()  # noise

    for name in (
        "cas_mean",
        "tail_rate",
        "label_fidelity",
        "prompt_alignment",
        "checklist_adherence",
        "plausibility",
        "cas_oracle_spearman",
    ):
        assert f"{name}__clip" in metrics
    assert (
        metrics["tail_rate_ci_low__clip"]
        <= metrics["tail_rate__clip"]
        <= metrics["tail_rate_ci_high__clip"]
    )
    assert metrics["tail_rate__clip__nodule"] >= 0.0
    assert metrics["cas_oracle_spearman__clip"] > 0.3
    from craft.report.summary import MetricsFile  # names are valid report metric names

    MetricsFile.model_validate(
        {
            "modality": "m",
            "method": "k",
            "seed": 0,
            "stage": "cas-clip",
            "metrics": metrics,
            "provenance": {"config_digest": "d", "craft_version": "0"},
        }
    )


def test_samples_with_other_labels_are_refused(
    tmp_path, cxr_evaluator, cxr_reference, cxr_knowledge
):
    from craft.errors import CraftError

    images, _ = draw_batch(PHANTOM, ["normal"], 1, 32)
    with atomic_h5(tmp_path / "s.h5", "samples", "s", attrs={"labels": ["a", "b"]}) as f:
        image_dataset(f, "images", images)
        f.create_dataset("labels", data=np.zeros(1, np.int64))
        f.create_dataset("prompts", data=["x"], dtype=STR)
        f.create_dataset("seeds", data=np.zeros(1, np.int64))
    with pytest.raises(CraftError, match="labels"):
        score_samples(
            cxr_evaluator, tmp_path / "s.h5", cxr_knowledge, cxr_reference, tmp_path / "cas.h5", "d"
        )


def test_bootstrap_ci_and_bandwidth():
    flags = np.r_[np.ones(20), np.zeros(80)]
    lo, hi = bootstrap_ci(flags, 500)
    assert lo < 0.2 < hi and hi - lo < 0.25
    assert silverman_bandwidth(np.ones(10)) == 0.0
    assert silverman_bandwidth(np.random.default_rng(0).normal(size=1000)) == pytest.approx(
        0.9 * 1000**-0.2, rel=0.1
    )


def test_checklist_loglik_gives_a_surely_failed_item_the_gradient_cas_lacks(
    cxr_evaluator, cxr_reference, cxr_knowledge
):
    """Real effusions requested as 'effusion' and as 'normal' (whose clear-bases item they
    surely fail): CAS is flat near 0 for the failures, so its gradient all but vanishes there;
    the checklist log-likelihood (the mean log P(item as expected)) keeps one, is at most 0,
    and matches its definition from the judge's item log-odds."""
    from craft.cas.score import TextBank, VLMJudge, cas_reward, label_indices

    images, _ = draw_batch(PHANTOM, ["effusion"] * 6, 6, 32)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    x = torch.cat([x, x]).requires_grad_()
    labels = ["effusion"] * 6 + ["normal"] * 6
    prompts = [f"chest radiograph, {lab}" for lab in labels]
    bank = TextBank.build(cxr_evaluator, cxr_knowledge, cxr_reference.label_names)
    args = (cxr_evaluator, x, labels, prompts, cxr_knowledge, cxr_reference, bank)
    s = cas_dimensions(*args)
    right, wrong = slice(0, 6), slice(6, 12)
    ll, cas = s["checklist_loglik"], s["cas"]
    assert (ll <= 0).all()
    assert ll[wrong].max() < ll[right].min()
    assert (cas[wrong] < cxr_reference.tau).all()
    (g_cas,) = torch.autograd.grad(cas.sum(), x, retain_graph=True)
    (g_ll,) = torch.autograd.grad(ll.sum(), x, retain_graph=True)
    n_cas, n_ll = g_cas.flatten(1).norm(dim=1), g_ll.flatten(1).norm(dim=1)
    print(f"|grad cas| {n_cas.tolist()}\n|grad loglik| {n_ll.tolist()}")
    assert (n_ll[wrong] > 5 * n_cas[wrong]).all()
    # the definition, from the judge's item log-odds
    with torch.no_grad():
        xd = x.detach()
        y = label_indices(labels, cxr_reference.label_names)
        emb = cxr_evaluator.encode_images(xd)
        a = VLMJudge(cxr_evaluator).item_log_odds(xd, emb, bank.checklist)
        a = torch.where(bank.item_expected[y], a, -a)
        w = bank.item_weight[y]
        want = (torch.nn.functional.logsigmoid(a) * w).sum(1) / w.sum(1)
    torch.testing.assert_close(ll.detach(), want)
    # the reward adds it at its weight; at weight 0 the reward is CAS itself
    with torch.no_grad():
        plain = cas_reward(*args, log=False)
        added = cas_reward(*args, log=False, checklist_weight=0.5)
    torch.testing.assert_close(plain, cas.detach())
    torch.testing.assert_close(added, cas.detach() + 0.5 * ll.detach())
