"""``craft memorization``: do generated images copy training images?

For every generated image, its nearest REAL training image by cosine similarity of encoder
embeddings (DINOv2-style, as in copy detection work; the tiny random-conv encoder for
phantoms), found in blocks (craft.evaluate.features.nearest_neighbours) so that 100k generated
x 1M training images never form a matrix. The training images are read from the data file
chunk by chunk. A second view compares pixels (correlation of area-downsampled images).

A generated image is memorized when its nearest similarity exceeds the threshold; the real
TEST images go through the same search as the reference distribution: fresh real images of the
same modality, so their rate says how often the threshold fires without any copying. A test
split larger than ``reference_max`` (2,000) gives a seeded subset of that many
(``reference_rows`` in memorization.h5), so that memory does not grow with the data set.

Metrics (``metrics-memorization.json``): ``memorization_rate`` (embedding view),
``memorization_rate_reference`` (real test vs train), ``memorization_rate_pixel`` and
``memorization_rate_pixel_reference``, ``memorization_similarity_median`` (+ ``_reference``),
``memorization_rate__{label}`` per requested label, and
``memorization_reference_patients_known``: the share of test images whose patient the
manifest names. For those, train images of the same patient are left out of the reference
search (a patient's second scan is no copy); patient-grouped splits already keep a patient
out of one of the two, so this guards data prepared otherwise. Artifacts beside it:
``memorization.h5`` (per generated / test image: nearest train index and similarity, both
views; the top pairs) and ``memorization-pairs.png`` (the most similar pairs).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from craft.errors import CraftError
from craft.evaluate import write_metrics
from craft.evaluate.features import (
    embed,
    iter_split_images,
    load_encoder,
    nearest_neighbours,
    pixel_vectors,
)
from craft.evaluate.settings import MemorizationConfig
from craft.progress import log
from craft.store import (
    atomic_h5,
    data_channels,
    expand_channels,
    open_h5,
    read_patients,
    read_samples,
    read_split,
)

#: Grid of the tiny encoder's pooled map here: fine enough to tell two phantoms apart.
TINY_GRID = 8


@dataclass
class NearestResult:
    """Nearest training image per query, for one view (embedding or pixels)."""

    index: np.ndarray  # (N,) int64 into the train split
    similarity: np.ndarray  # (N,) float32 cosine similarity
    reference_index: np.ndarray  # (M,) for the real test images
    reference_similarity: np.ndarray


def _train_vectors(
    data_h5: Path, vectorise: Callable[[np.ndarray], np.ndarray], chunk: int, what: str
) -> Iterator[np.ndarray]:
    """The train split's vectors, ``chunk`` images at a time, with a log line every 30 s."""
    t0 = last = time.monotonic()
    done = 0
    for block in iter_split_images(data_h5, "train", chunk):
        yield vectorise(block)
        done += len(block)
        if time.monotonic() - last > 30:
            last = time.monotonic()
            log(f"memorization ({what}): {done} train images in {last - t0:.0f} s")


def nearest_training(
    data_h5: Path,
    queries: list[np.ndarray],
    vectorise: Callable[[np.ndarray], np.ndarray],
    chunk_size: int,
    centre: bool,
    cache_dir: Path | None = None,
    what: str = "",
    query_groups: list[np.ndarray] | None = None,
    train_groups: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each query image set, (index, similarity) of the nearest train image of ``data_h5``.

    With ``query_groups`` (one int array per query set) and ``train_groups`` (the patient of
    each train image as an int, -1 where unknown), no train image of a query's own patient is
    its neighbour.

    Train images stream from the file in chunks, so neither they nor the similarity matrix are
    held at once. With ``centre`` the search needs the train mean first: a first pass computes
    it, and, with ``cache_dir`` (for costly encoders), writes the train vectors to a file there
    that the second pass reads a block at a time instead of encoding again (deleted afterwards).
    """
    mean, cache, path = None, None, None
    if centre:
        total, count, parts = None, 0, []
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            path = Path(cache_dir) / f".memorization-train-{os.getpid()}.f32"
        try:
            with open(path, "wb") if path is not None else contextlib.nullcontext() as fh:
                for v in _train_vectors(data_h5, vectorise, chunk_size, what):
                    v = np.ascontiguousarray(v, dtype=np.float32)
                    total = v.astype(np.float64).sum(0) + (0 if total is None else total)
                    count += len(v)
                    parts.append(v.shape[1])
                    if fh is not None:
                        fh.write(v.tobytes())
            if count == 0:
                raise CraftError(f"{data_h5}: the train split is empty; nothing to compare with")
            mean = (total / count).astype(np.float32)
            if path is not None:
                cache = (count, parts[0])
        except BaseException:
            if path is not None:
                path.unlink(missing_ok=True)
            raise
    # chunk by chunk, as the train stream: a real split is read a chunk at a time
    q_vecs = [
        np.concatenate([vectorise(q[i : i + chunk_size]) for i in range(0, len(q), chunk_size)])
        if len(q)
        else vectorise(q[:0])
        for q in queries
    ]
    if mean is not None:
        q_vecs = [q - mean for q in q_vecs]
    # One pass over the train stream serves every query set: stack them.
    stacked = np.concatenate(q_vecs) if q_vecs else np.zeros((0, 0), np.float32)

    def cached() -> Iterator[np.ndarray]:
        # read a block at a time, not memory-mapped: a map's pages count in the job's resident
        # memory as they are read (the whole file by the end: 100 MB at 34k train phantoms)
        count, dim = cache
        with open(path, "rb") as fh:
            for start in range(0, count, chunk_size):
                n = min(chunk_size, count - start)
                yield np.fromfile(fh, dtype=np.float32, count=n * dim).reshape(n, dim)

    def keys() -> Iterator[np.ndarray]:
        if cache is not None:
            blocks = cached()
        else:
            blocks = _train_vectors(data_h5, vectorise, chunk_size, what)
        for v in blocks:
            yield v - mean if mean is not None else v

    try:
        groups = np.concatenate(query_groups) if query_groups is not None else None
        idx, sim = nearest_neighbours(stacked, keys(), chunk_size, True, groups, train_groups)
    finally:
        if path is not None:
            path.unlink(missing_ok=True)
    if (idx < 0).any():
        raise CraftError(f"{data_h5}: the train split is empty; nothing to compare with")
    out, start = [], 0
    for q in q_vecs:
        out.append((idx[start : start + len(q)], sim[start : start + len(q)]))
        start += len(q)
    return out


def _view(
    data_h5: Path,
    generated: np.ndarray,
    test: np.ndarray,
    vectorise: Callable[[np.ndarray], np.ndarray],
    settings: MemorizationConfig,
    cache_dir: Path | None = None,
    what: str = "",
    patients: tuple[np.ndarray, np.ndarray] | None = None,
) -> NearestResult:
    """Nearest train images of the generated and the real test images; ``patients`` (test,
    train patient ints) keeps a test image's own patient out of its reference search."""
    query_groups = train_groups = None
    if patients is not None:
        query_groups = [np.full(len(generated), -1, np.int64), patients[0]]
        train_groups = patients[1]
    (gi, gs), (ri, rs) = nearest_training(
        data_h5,
        [generated, test],
        vectorise,
        settings.chunk_size,
        settings.centre,
        cache_dir,
        what,
        query_groups,
        train_groups,
    )
    return NearestResult(gi, gs, ri, rs)


def _rate(similarity: np.ndarray, threshold: float) -> float:
    return float((similarity > threshold).mean()) if len(similarity) else float("nan")


def pairs_figure(
    generated: np.ndarray,
    train_images: np.ndarray,
    similarity: np.ndarray,
    out: Path,
    title: str,
) -> Path:
    """A PNG of generated images (top row) over their nearest training images (bottom row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(generated)
    fig, axes = plt.subplots(2, k, figsize=(1.3 * k + 0.4, 3.0), squeeze=False)
    for j in range(k):
        for row, img in ((0, generated[j]), (1, train_images[j])):
            ax = axes[row, j]
            gray = img.shape[-1] == 1
            ax.imshow(img[..., 0] if gray else img, cmap="gray" if gray else None, vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, j].set_title(f"{similarity[j]:.3f}", fontsize=8)
    axes[0, 0].set_ylabel("generated", fontsize=8)
    axes[1, 0].set_ylabel("nearest train", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)
    return out


def patient_ids(data_h5: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """(test, train) patient of each image as ints (-1 where unknown) and the share of test
    images whose patient is known."""
    test, train = read_patients(data_h5, "test"), read_patients(data_h5, "train")
    ids = {p: i for i, p in enumerate(sorted((set(test) | set(train)) - {""}))}
    as_ints = lambda ps: np.array([ids.get(p, -1) for p in ps], np.int64)  # noqa: E731
    t = as_ints(test)
    return t, as_ints(train), float((t >= 0).mean()) if len(t) else 0.0


def reference_rows(n_test: int, reference_max: int, seed: int) -> np.ndarray:
    """The test rows the reference search uses, in file order: all of them, or a seeded
    subset of ``reference_max`` where the split is larger (memory then stays flat in the data
    set's size: the search holds a vector per query)."""
    if n_test <= reference_max:
        return np.arange(n_test, dtype=np.int64)
    rng = np.random.default_rng([seed, n_test])
    return np.sort(rng.choice(n_test, size=reference_max, replace=False)).astype(np.int64)


def _train_rows(data_h5: Path, rows: np.ndarray) -> np.ndarray:
    with open_h5(data_h5, "data") as f:
        ds = f["train"]["images"]
        images = np.stack([ds[int(i)] for i in rows]) if len(rows) else ds[:0]
        return expand_channels(images, data_channels(f, "train"))


def patients_note(known: float) -> str:
    """What the real-image reference of the memorization rate knew of patients, given the
    share of test images whose patient is known (the log line and the report's note)."""
    if known >= 1:
        return (
            "Memorization reference: every test image's patient is known; train images of the "
            "same patient were left out of its search."
        )
    if known <= 0:
        return (
            "Memorization reference: patients unknown (the data names none; a manifest names "
            "them in a patient column), so a test image may have met a train image of its own "
            "patient; the reference rate may be high for that reason."
        )
    return (
        f"Memorization reference: patients known for {known:.0%} of the test images (their "
        "same-patient train images left out); the others may meet their own patient."
    )


def memorization(
    settings: MemorizationConfig,
    data_h5: Path,
    samples_h5: Path,
    out: Path,
    modality: str,
    method: str,
    seed: int,
    config_digest: str,
    artifacts: Path | None = None,
) -> dict[str, float]:
    """Nearest training neighbours of generated and real test images -> metrics + artifacts.

    Writes ``out`` (metrics JSON) and, in ``artifacts`` (default: ``out``'s folder),
    ``memorization.h5`` and ``memorization-pairs.png``.
    """
    t0 = time.monotonic()
    artifacts = Path(artifacts) if artifacts is not None else Path(out).parent
    samples = read_samples(samples_h5)
    test = read_split(data_h5, "test")
    if list(samples.label_names) != list(test.label_names):
        raise CraftError(
            f"{samples_h5} has labels {samples.label_names}, {data_h5} has {test.label_names}: "
            "generate from the same modality"
        )
    if samples.images.shape[1:] != test.images.shape[1:]:
        raise CraftError(
            f"{samples_h5} images are {samples.images.shape[1:]}, {data_h5} images "
            f"{test.images.shape[1:]}: generate at the data's resolution and channels"
        )
    if len(samples) == 0:
        raise CraftError(f"{samples_h5} holds no images")
    channels = samples.images.shape[-1]

    def pixels(x: np.ndarray) -> np.ndarray:
        return pixel_vectors(x, settings.pixel_size)

    threshold = settings.threshold
    test_patients, train_patients, known = patient_ids(data_h5)
    reference = reference_rows(len(test), settings.reference_max, settings.seed)
    test_images = test.images.subset(reference)
    patients = (test_patients[reference], train_patients)
    pixel = _view(
        data_h5, samples.images, test_images, pixels, settings, what="pixels", patients=patients
    )
    if settings.encoder == "pixels":
        main = pixel
    else:
        encoder = load_encoder(
            settings.encoder, channels, settings.seed, TINY_GRID, "evaluation.memorization.encoder"
        )

        def vectorise(x: np.ndarray) -> np.ndarray:
            return embed(encoder, x, settings.batch_size)

        main = _view(
            data_h5,
            samples.images,
            test_images,
            vectorise,
            settings,
            artifacts,
            settings.encoder,
            patients,
        )
    metrics = {
        "memorization_rate": _rate(main.similarity, threshold),
        "memorization_rate_reference": _rate(main.reference_similarity, threshold),
        "memorization_similarity_median": float(np.median(main.similarity)),
        "memorization_similarity_median_reference": float(
            np.median(main.reference_similarity) if len(main.reference_similarity) else np.nan
        ),
        "memorization_rate_pixel": _rate(pixel.similarity, settings.pixel_threshold),
        "memorization_rate_pixel_reference": _rate(
            pixel.reference_similarity, settings.pixel_threshold
        ),
        "memorization_reference_patients_known": known,
    }
    for i, label in enumerate(samples.label_names):
        sel = samples.labels == i
        if sel.any():
            metrics[f"memorization_rate__{label}"] = _rate(main.similarity[sel], threshold)

    k = min(settings.top_pairs, len(samples))
    top = np.argsort(-main.similarity, kind="stable")[:k]
    artifacts.mkdir(parents=True, exist_ok=True)
    attrs = {
        "encoder": settings.encoder,
        "threshold": threshold,
        "pixel_threshold": settings.pixel_threshold,
        "centre": int(settings.centre),
        "labels": list(samples.label_names),
        "samples": str(samples_h5),
        "data": str(data_h5),
        "reference_patients_known": known,
    }
    with atomic_h5(artifacts / "memorization.h5", "memorization", config_digest, attrs=attrs) as f:
        for name, res in (("embedding", main), ("pixels", pixel)):
            g = f.create_group(name)
            g.create_dataset("nn_index", data=res.index)
            g.create_dataset("nn_similarity", data=res.similarity)
            g.create_dataset("reference_nn_index", data=res.reference_index)
            g.create_dataset("reference_nn_similarity", data=res.reference_similarity)
        f.create_dataset("reference_rows", data=reference)
        g = f.create_group("top_pairs")
        g.create_dataset("generated_index", data=top.astype(np.int64))
        g.create_dataset("train_index", data=main.index[top])
        g.create_dataset("similarity", data=main.similarity[top])
    pairs_figure(
        samples.images[top],
        _train_rows(data_h5, main.index[top]),
        main.similarity[top],
        artifacts / "memorization-pairs.png",
        f"{modality} / {method} / seed {seed}: most similar pairs ({settings.encoder}; "
        f"memorized above {threshold:g})",
    )
    write_metrics(out, modality, method, seed, "memorization", metrics, config_digest)
    log(patients_note(known))
    log(
        f"{modality}/{method}/{seed}: memorization rate {metrics['memorization_rate']:.3f} "
        f"(real test reference {metrics['memorization_rate_reference']:.3f}), pixel view "
        f"{metrics['memorization_rate_pixel']:.3f}, {len(samples)} images in "
        f"{time.monotonic() - t0:.1f} s; reference: {len(reference)} of {len(test)} test images"
    )
    return metrics
