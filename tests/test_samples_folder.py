"""samples-folder: both naming schemes, a CSV / JSON mapping, resizing, missing files."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from bench.api import UserError
from bench.datasets.base import build_dataset
from bench.runner import Runner, check_resources
from bench.suite import load_suite
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


def test_missing_folder_and_mapping_are_listed_once_each(tmp_path):
    args = SamplesFolderArgs(path=str(tmp_path / "nope"), mapping="m.csv")
    with pytest.raises(UserError, match="nope"):
        SamplesFolder(args, 16)
    assert missing_resources(SamplesFolderArgs(path=str(tmp_path))) == []
    (tmp_path / "s.yaml").write_text("suite: s\nversion: 1\ndataset: {name: shapes, resolution: 16, num_captions: 4}\n"
                                     "systems: [{name: samples-folder, alias: pub, args: {path: nope, mapping: m.csv}}]\n"
                                     "metrics: [{name: throughput}]\n")
    problems = check_resources(load_suite(tmp_path / "s.yaml"))
    assert len(problems) == 2 and sum("'pub'" in p and "nope does not exist" in p for p in problems) == 1
    assert sum("m.csv" in p for p in problems) == 1


def test_a_run_lacking_a_caption_image_stops_before_generating_and_leaves_no_folder(folder, tmp_path):
    (tmp_path / "s.yaml").write_text(f"suite: s\nversion: 1\ndataset: {{name: shapes, resolution: 16, num_captions: 12, "
                                     f"train_size: 1, pairs_size: 1}}\n"
                                     f"systems: [{{name: noise}}, {{name: samples-folder, args: {{path: {folder}}}}}]\n"
                                     f"metrics: [{{name: throughput}}]\n")
    out = tmp_path / "run"
    with pytest.raises(UserError, match=r"no image for caption id \d+ .*\(\d+ of the 12 captions have none\)"):
        Runner(load_suite(tmp_path / "s.yaml"), out_dir=out, progress=False, cache=tmp_path / "cache").run()
    assert not out.exists()


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


def test_path_is_relative_to_the_suite_file_not_the_current_folder(tmp_path, monkeypatch):
    from bench.suite import load_suite

    suites, elsewhere = tmp_path / "suites", tmp_path / "elsewhere"
    (suites / "samples").mkdir(parents=True)
    elsewhere.mkdir()
    _write(suites / "samples" / "0.png", (255, 0, 0))
    (suites / "s.yaml").write_text("suite: s\nversion: 1\ndataset: {name: shapes, resolution: 16}\n"
                                   "systems:\n  - {name: samples-folder, alias: pub, args: {path: samples}}\n"
                                   "  - {name: samples-folder, alias: up, args: {path: ../elsewhere}}\n")
    monkeypatch.chdir(elsewhere)  # where a cwd-relative `samples` does not exist
    suite = load_suite(suites / "s.yaml")
    args = suite.system("pub").args
    assert args.path == str(suites / "samples") and missing_resources(args) == []
    assert SamplesFolder(args, 16).generate(["a"], [0], [0])[0, 0].float().mean() > 250
    assert suite.system("up").args.path == str(elsewhere)
    # a --set value is the command line's: relative to the current folder
    set_here = load_suite(suites / "s.yaml", ["systems.pub.args.path=mine"])
    assert set_here.system("pub").args.path == str(elsewhere / "mine")


def test_a_mapping_outside_the_folder_is_part_of_what_the_samples_are_made_of(folder, tmp_path_factory):
    from bench.build import Builder
    from bench.datasets.base import build_dataset

    outside = tmp_path_factory.mktemp("maps") / "map.json"
    suite_file = tmp_path_factory.mktemp("suite") / "s.yaml"
    suite_file.write_text(f"suite: s\nversion: 1\ndataset: {{name: shapes, resolution: 16, num_captions: 4}}\n"
                          f"systems: [{{name: samples-folder, alias: pub, args: {{path: {folder}, mapping: {outside}}}}}]\n"
                          f"metrics: [{{name: throughput}}]\n")

    def made_of(mapping: dict) -> list[str]:
        outside.write_text(json.dumps(mapping))
        suite = load_suite(suite_file)
        builder = Builder(suite, build_dataset(suite.dataset), "cpu", str(tmp_path_factory.mktemp("c")), progress=False)
        builder.system("pub")
        return builder.made_of(("system", "pub"))

    first = made_of({"0": "3.png", "1": "000007.jpg"})
    assert made_of({"0": "000007.jpg", "1": "3.png"}) != first  # the same size: only the mtime tells them apart


def test_random_caption_of_a_samples_folder_needs_every_eval_caption_before_generating(tmp_path):
    """random-caption may hand any eval caption to the folder, not only the run's 4 (--limit): a folder with just
    those stops the run before anything is generated, naming random-caption; with every caption's image it runs."""
    samples = tmp_path / "samples"
    samples.mkdir()
    (tmp_path / "s.yaml").write_text(
        f"suite: s\nversion: 1\ndataset: {{name: shapes, resolution: 16, num_captions: 12, train_size: 1, "
        f"pairs_size: 1}}\ngeneration: {{seeds: [0], warmup: false}}\n"
        f"systems: [{{name: samples-folder, alias: pub, args: {{path: {samples}}}}}, "
        f"{{name: random-caption, args: {{of: pub}}}}]\nmetrics: [{{name: throughput}}]\n")
    suite = load_suite(tmp_path / "s.yaml")
    ids = [it.caption_id for it in build_dataset(suite.dataset).eval_captions()]
    assert len(ids) == 12
    for cid in ids[:4]:
        _write(samples / f"{cid}.png", (cid, 0, 0))
    out = tmp_path / "run"
    with pytest.raises(UserError, match=r"^random-caption hands .* any eval caption.*\(8 of the 12 captions have none\)"):
        Runner(suite, out_dir=out, limit=4, progress=False, cache=tmp_path / "cache").run()
    assert not out.exists()
    for cid in ids[4:]:
        _write(samples / f"{cid}.png", (cid, 0, 0))
    results = Runner(suite, out_dir=out, limit=4, progress=False, cache=tmp_path / "cache").run()
    assert set(results.frame().system) == {"pub", "random-caption"}


@pytest.mark.parametrize("content", [b"", b"not an image\n", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_a_file_that_is_no_image_stops_the_run_before_generating(folder, tmp_path, content):
    (folder / "5.png").write_bytes(content)
    system = SamplesFolder(SamplesFolderArgs(path=str(folder)), resolution=16)
    system.check_captions([3, 7])  # the readable ones pass
    with pytest.raises(UserError, match=r"^samples-folder: the image of caption id 5, .*5\.png, cannot be read"):
        system.check_captions([3, 5, 7])
