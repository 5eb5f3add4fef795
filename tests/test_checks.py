"""Plan-time checks of the files and folders a config names (craft.checks): `craft config
check` and the Snakefile refuse each in one line naming the field, the path and the fix."""

from __future__ import annotations

import pytest

from craft.checks import check_files
from craft.config import validate_config
from tests.conftest import REPO, tiny_config
from tests.data.test_prepare import site_config
from tests.site_data import write_site


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    return write_site(root, n_patients=12)


def problems(data: dict) -> list[str]:
    return check_files(validate_config(data))


def test_a_sites_config_with_every_file_in_place_passes(site):
    assert problems(site_config(*site)) == []
    phantom = tiny_config()
    phantom["models"] = {"generator": str(REPO / "assets/phantom-foundation/{modality}")}
    assert problems(phantom) == []


@pytest.mark.parametrize(
    ("mutate", "says"),
    [
        (
            lambda d, t: d["modalities"]["site-ct"]["source"].update(manifest=str(t / "no.csv")),
            "modalities.site-ct.source.manifest: '{t}/no.csv' does not exist; fix the path",
        ),
        (
            lambda d, t: d["modalities"]["site-ct"]["source"].update(manifest=str(t)),
            "modalities.site-ct.source.manifest: '{t}' is a folder, not a CSV file",
        ),
        (
            lambda d, t: d["modalities"]["site-ct"]["source"].update(image_root=str(t / "x")),
            "modalities.site-ct.source.image_root: '{t}/x' is not a folder",
        ),
        (
            lambda d, t: d.update(knowledge={"review": {"site-ct": str(t / "r.yaml")}}),
            "knowledge.review.site-ct: '{t}/r.yaml' does not exist",
        ),
        (
            lambda d, t: d.update(knowledge={"curated": {"site-ct": str(t / "mine.yaml")}}),
            "knowledge.curated.site-ct: '{t}/mine.yaml' does not exist",
        ),
        (
            lambda d, t: d.update(models={"generator": str(REPO / "assets/phantom-foundation")}),
            "models.generator: '{repo}/assets/phantom-foundation': the folder has no "
            "model_index.json",
        ),
        (
            lambda d, t: d["cas"]["evaluators"]["clip"].update(source=str(t / "clip")),
            "cas.evaluators.clip.source: '{t}/clip': no such folder; fix "
            "cas.evaluators.clip.source or copy the model there",
        ),
    ],
)
def test_each_missing_file_or_folder_is_one_line(site, tmp_path, mutate, says):
    data = site_config(*site)
    mutate(data, tmp_path)
    found = problems(data)
    assert len(found) == 1, found
    assert found[0].startswith(says.format(t=tmp_path, repo=REPO)), found
