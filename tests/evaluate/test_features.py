"""The shared encoders and the streaming nearest-neighbour search."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from craft.data.phantoms import draw_batch
from craft.errors import CraftError
from craft.evaluate.features import RandomConvEncoder, embed, nearest_neighbours, pixel_vectors


def _direct(q: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    kn = k / np.linalg.norm(k, axis=1, keepdims=True)
    s = qn @ kn.T
    return s.argmax(1), s.max(1)


def test_chunked_search_equals_the_direct_matrix():
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(53, 12)), rng.normal(size=(87, 12))
    want_idx, want_sim = _direct(q, k)
    for chunk in (1, 7, 50, 1000):  # smaller than both sets, between, larger than both
        idx, sim = nearest_neighbours(q, k, chunk_size=chunk)
        np.testing.assert_array_equal(idx, want_idx)
        np.testing.assert_allclose(sim, want_sim, atol=1e-5)


def test_keys_may_arrive_as_a_stream_of_blocks():
    rng = np.random.default_rng(1)
    q, k = rng.normal(size=(20, 6)), rng.normal(size=(45, 6))
    want_idx, want_sim = _direct(q, k)
    stream = (k[i : i + 11] for i in range(0, len(k), 11))  # uneven blocks, indices continue
    idx, sim = nearest_neighbours(q, stream, chunk_size=4)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(sim, want_sim, atol=1e-5)


def test_no_keys_and_bad_shapes():
    idx, sim = nearest_neighbours(np.ones((3, 4)), [], chunk_size=2)
    assert (idx == -1).all() and np.isinf(sim).all()
    with pytest.raises(CraftError, match="embed both alike"):
        nearest_neighbours(np.ones((3, 4)), np.ones((2, 5)))
    with pytest.raises(CraftError, match="chunk_size"):
        nearest_neighbours(np.ones((3, 4)), np.ones((2, 4)), chunk_size=0)


def test_random_conv_encoder_is_fixed_by_its_seed():
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (5, 32, 32, 1), dtype=np.uint8)
    a = embed(RandomConvEncoder(1, seed=3), images)
    b = embed(RandomConvEncoder(1, seed=3), images)
    c = embed(RandomConvEncoder(1, seed=4), images)
    assert a.shape == (5, RandomConvEncoder(1).num_features)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    with pytest.raises(CraftError, match="3 channels"):
        embed(RandomConvEncoder(3), images)


def test_pixel_vectors_give_correlations():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (1, 16, 16, 1), dtype=np.uint8)
    brighter = np.clip(img.astype(int) // 2 + 60, 0, 255).astype(np.uint8)  # affine: r = 1
    v = pixel_vectors(np.concatenate([img, brighter]))
    assert v[0] @ v[1] == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(CraftError, match="uint8 NHWC"):
        pixel_vectors(img.astype(np.float32))


def test_image_statistics_see_contrast_and_grain_but_not_where_things_lie():
    """Flipping an image keeps every statistic (a quantile does not care where a pixel is,
    the Laplacian stencil is symmetric); lowering its contrast or smoothing it does not.
    Standardised by the images it was fitted on, and differentiable."""
    from craft.evaluate.features import ImageStatistics, to_float

    images, _ = draw_batch("phantom-cxr", ["nodule"] * 16, 0, 32)
    stats = ImageStatistics(1).fit(images)
    x = to_float(images)
    f = stats(x)
    assert f.shape == (16, 5 * 4)  # 5 quantiles of the intensities + of 3 Laplacian scales
    assert torch.allclose(f.mean(0), torch.zeros(20), atol=1e-4)
    assert torch.allclose(f.std(0), torch.ones(20), atol=1e-3)
    torch.testing.assert_close(stats(x.flip(-1)), f, rtol=0, atol=1e-4)
    torch.testing.assert_close(stats(x.flip(-2)), f, rtol=0, atol=1e-4)
    flat = stats(0.5 * x)
    smooth = stats(torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1))
    for other in (flat, smooth):
        assert (other - f).abs().mean() > 0.5, float((other - f).abs().mean())
    grad_in = x[:2].clone().requires_grad_()
    (grad,) = torch.autograd.grad(stats(grad_in).pow(2).sum(), grad_in)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    with pytest.raises(CraftError, match="set up for 1-channel"):
        stats(torch.zeros(2, 3, 32, 32))
    with pytest.raises(CraftError, match="two or more real images"):
        ImageStatistics(1).fit(images[:1])
    # fit_transform: the fit and the fitted images' statistics in one pass
    other = ImageStatistics(1)
    torch.testing.assert_close(other.fit_transform(images), f)
    torch.testing.assert_close(other.mean, stats.mean)


def test_the_realism_term_takes_the_real_pool_precomputed_or_computes_it_alike():
    """embedding_mmd_fn with ``embeddings`` (the fit's own pass) gives the term it computes
    itself from the images; a pool of the wrong length is refused."""
    from craft.evaluate.features import ImageStatistics, to_float
    from craft.train.align import embedding_mmd_fn

    images, _ = draw_batch("phantom-cxr", ["nodule", "effusion"] * 12, 0, 32)
    labels = np.array([0, 1] * 12)
    stats = ImageStatistics(1)
    real = stats.fit_transform(images)
    given = embedding_mmd_fn(stats, images, labels, ["nodule", "effusion"], 8, embeddings=real)
    own = embedding_mmd_fn(stats, images, labels, ["nodule", "effusion"], 8)
    gen, gen_labels = to_float(images[:8]) * 0.7, labels[:8]
    sources = np.arange(8)
    a = given(gen, gen_labels, sources, np.random.default_rng(0))
    b = own(gen, gen_labels, sources, np.random.default_rng(0))
    torch.testing.assert_close(a, b)
    assert a > 0
    with pytest.raises(ValueError, match="3 embeddings for 24 real images"):
        embedding_mmd_fn(stats, images, labels, ["nodule", "effusion"], 8, embeddings=real[:3])
