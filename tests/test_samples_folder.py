"""samples-folder: both naming schemes, a CSV / JSON mapping, resizing, missing files."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from bench.api import UserError
from bench.systems.samples_folder import SamplesFolder, SamplesFolderArgs, missing_resources


def _write(path, colour, size=(48, 64)):
    Image.fromarray(np.full((size[1], size[0], 3), colour, dtype=np.uint8)).save(path)


@pytest.fixture
def folder(tmp_path):
    _write(tmp_path / "3.png", (255, 0, 0))  # plain id
    _write(tmp_path / "000007.jpg", (0, 0, 255))  # zero-padded, JPEG
    _write(tmp_path / "other.png", (0, 255, 0))  # only reachable through a mapping
    (tmp_path / "notes.txt").write_text("ignored")
    return tmp_path


def test_both_naming_schemes_resized_to_dataset_resolution(folder):
    system = SamplesFolder(SamplesFolderArgs(path=str(folder)), resolution=16)
    images = system.generate(["a", "b", "a"], [3, 7, 3], [0, 0, 1])
    assert images.dtype == torch.uint8 and images.shape == (3, 3, 16, 16)
    assert images[0, 0].float().mean() > 250 and images[0, 2].float().mean() < 5  # red
    assert images[1, 2].float().mean() > 240 and images[1, 0].float().mean() < 15  # blue (JPEG: near)
    assert torch.equal(images[0], images[2])  # one sample per caption, whatever the seed
    assert system.uses_captions is True


def test_csv_and_json_mappings(folder):
    (folder / "map.csv").write_text("caption_id,file\n0,other.png\n1,3.png\n")
    system = SamplesFolder(SamplesFolderArgs(path=str(folder), mapping="map.csv", uses_captions=False), 8)
    images = system.generate(["x", "y"], [0, 1], [0, 0])
    assert images[0, 1].float().mean() > 250 and images[1, 0].float().mean() > 250
    assert system.uses_captions is False
    (folder / "map.json").write_text(json.dumps({"5": "000007.jpg"}))
    images = SamplesFolder(SamplesFolderArgs(path=str(folder), mapping="map.json"), 8).generate(["z"], [5], [0])
    assert images[0, 2].float().mean() > 240


def test_missing_image_names_the_caption_id(folder):
    system = SamplesFolder(SamplesFolderArgs(path=str(folder)), resolution=16)
    with pytest.raises(UserError, match="caption id 42"):
        system.generate(["a", "b"], [3, 42], [0, 0])


def test_missing_folder_and_mapping_are_listed(tmp_path):
    args = SamplesFolderArgs(path=str(tmp_path / "nope"), mapping="m.csv")
    problems = missing_resources(args)
    assert len(problems) == 2 and "nope" in problems[0] and "m.csv" in problems[1]
    with pytest.raises(UserError, match="nope"):
        SamplesFolder(args, 16)
    assert missing_resources(SamplesFolderArgs(path=str(tmp_path))) == []


def test_bad_mapping_and_duplicate_ids_are_user_errors(folder):
    (folder / "bad.csv").write_text("id,path\n0,3.png\n")
    with pytest.raises(UserError, match="caption_id,file"):
        SamplesFolder(SamplesFolderArgs(path=str(folder), mapping="bad.csv"), 8)
    _write(folder / "03.png", (1, 2, 3))
    with pytest.raises(UserError, match="caption id 3 has two files"):
        SamplesFolder(SamplesFolderArgs(path=str(folder)), 8)


def test_registered():
    from bench.registry import SYSTEMS

    import bench.systems.samples_folder  # noqa: F401  (registers even before the lead wires it in)

    assert SYSTEMS._entries["samples-folder"].args is SamplesFolderArgs
