"""Runner guarantees: batch-size invariance, resumption after SIGKILL (only of the same build's samples), atomic
results."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.api import UserError
from bench.runner import Runner, caption_seed
from bench.suite import load_suite

CHILD = r'''
import json, os, sys, time
from dataclasses import dataclass
import torch
from bench.api import MetricValue
from bench.registry import METRICS, SYSTEMS
from bench.runner import Runner
from bench.suite import load_suite

LOG = os.environ["CALL_LOG"]

class SlowNoise:
    uses_captions = False
    def generate(self, captions, caption_ids, seeds):
        out = torch.stack([torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8,
                                         generator=torch.Generator().manual_seed(s)) for s in seeds])
        time.sleep(float(os.environ.get("SLEEP", "0")))
        with open(LOG, "a") as fh:
            fh.write(json.dumps(caption_ids) + "\n")
        return out

class MeanPixel:
    def __init__(self): self.values = {}
    def update(self, batch):
        for cid, img in zip(batch.caption_ids, batch.images):
            self.values[cid] = img.float().mean().item()
    def compute(self, ctx):
        for cid, v in self.values.items():
            ctx.per_caption[cid] = {"mean-pixel": v}
        vals = list(self.values.values())
        return [MetricValue("mean-pixel", "", sum(vals) / len(vals), len(vals))]

SYSTEMS.register("slow-noise", "test system")(lambda args, ctx: SlowNoise())
METRICS.register("mean-pixel", "test metric")(lambda args: MeanPixel())
Runner(load_suite(sys.argv[1]), out_dir=sys.argv[2], progress=False).run()
'''

SUITE = """suite: resume
version: 1
dataset: {name: shapes, resolution: 16, num_captions: 48, train_size: 1, pairs_size: 1}
generation: {batch_size: 8, seeds: [0, 1], warmup: false}
systems: [{name: slow-noise}]
metrics: [{name: mean-pixel}]
"""


def _child(tmp_path, out, log, sleep):
    (tmp_path / "child.py").write_text(CHILD)
    (tmp_path / "suite.yaml").write_text(SUITE)
    env = {**os.environ, "CALL_LOG": str(log), "SLEEP": str(sleep)}
    return subprocess.Popen([sys.executable, str(tmp_path / "child.py"), str(tmp_path / "suite.yaml"), str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _calls(log: Path) -> list[list[int]]:
    return [json.loads(l) for l in log.read_text().splitlines()] if log.exists() else []


def test_sigkill_then_resume_matches_uninterrupted_and_regenerates_at_most_one_batch(tmp_path):
    out, log1, log2 = tmp_path / "killed", tmp_path / "calls1", tmp_path / "calls2"
    proc = _child(tmp_path, out, log1, sleep=0.4)
    samples = out / "samples" / "slow-noise" / "seed0"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(samples.glob("*.png"))) < 24:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved_at_kill = {int(p.stem) for p in samples.glob("*.png")}
    assert 24 <= len(saved_at_kill) < 48, "the kill should land mid-run"
    assert not list(out.glob("results.*")), "no results file before the run finished"
    assert not [p for p in samples.iterdir() if p.name.startswith(".")], "no half-written samples left visible"

    proc = _child(tmp_path, out, log2, sleep=0.0)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    first = {c for call in _calls(log1) for c in call}
    second_seed0 = [c for call in _calls(log2) for c in call if c < 48][: 48 - len(saved_at_kill)]
    regenerated = first & set(second_seed0)
    assert len(regenerated) <= 8, f"regenerated {len(regenerated)} captions, more than one batch"
    assert set(second_seed0) == set(range(48)) - saved_at_kill

    ref_out = tmp_path / "uninterrupted"
    proc = _child(tmp_path, ref_out, tmp_path / "calls3", sleep=0.0)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    killed = pd.read_csv(out / "results.csv").sort_values(["seed"])
    clean = pd.read_csv(ref_out / "results.csv").sort_values(["seed"])
    assert list(killed["value"]) == list(clean["value"]) and len(killed) == 2


def _suite(tmp_path, batch_size):
    p = tmp_path / f"bs{batch_size}.yaml"
    p.write_text(f"""suite: bs
version: 1
dataset: {{name: shapes, resolution: 16, num_captions: 40, train_size: 1, pairs_size: 1}}
generation: {{batch_size: {batch_size}, seeds: [0, 3]}}
systems: [{{name: real-images}}, {{name: noise}}]
""")
    return load_suite(p)


def test_batch_size_does_not_change_samples(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    Runner(_suite(tmp_path, 8), out_dir=a, progress=False).run()
    Runner(_suite(tmp_path, 64), out_dir=b, progress=False).run()
    files = sorted(p.relative_to(a) for p in (a / "samples").rglob("*.png"))
    assert len(files) == 2 * 2 * 40
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_a_batch_of_one_makes_the_same_bytes_as_a_full_batch(tmp_path):
    """Convolutions round a batch of one differently; the runner runs it as two rows, so VQGAN decoding at
    batch_size 1 (or a last chunk of one) writes what batch 24 writes."""
    from reference.checkpoint import save_vqgan
    from reference.configs import get_preset
    from reference.vqgan import VQGAN

    torch.manual_seed(0)
    save_vqgan(tmp_path / "vqgan", VQGAN(get_preset("tiny").vqgan))
    runs = {}
    for bs in (1, 24):
        p = tmp_path / f"one{bs}.yaml"
        p.write_text(f"suite: one\nversion: 1\ndataset: {{name: shapes, resolution: 32, num_captions: 24, train_size: 1, "
                     f"pairs_size: 1}}\ngeneration: {{batch_size: {bs}, seeds: [0]}}\n"
                     f"components: {{vqgan: {{kind: vqgan, path: {tmp_path / 'vqgan'}}}}}\n"
                     f"systems: [{{name: vqgan-recon}}]\n")
        Runner(load_suite(p), out_dir=tmp_path / f"r{bs}", progress=False, cache=tmp_path / "cache").run()
        folder = tmp_path / f"r{bs}" / "samples" / "vqgan-recon" / "seed0"
        runs[bs] = {f.name: f.read_bytes() for f in folder.glob("*.png")}
    assert len(runs[1]) == 24 and runs[1] == runs[24]


def test_limit_and_resume_only_generate_missing(tmp_path):
    suite = _suite(tmp_path, 8)
    Runner(suite, out_dir=tmp_path / "r", limit=8, progress=False).run()
    folder = tmp_path / "r" / "samples" / "noise" / "seed0"
    assert len(list(folder.glob("*.png"))) == 8
    stamp = {p: p.stat().st_mtime_ns for p in folder.glob("*.png")}
    Runner(suite, out_dir=tmp_path / "r", progress=False).run()
    assert len(list(folder.glob("*.png"))) == 40
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items()), "existing samples were rewritten"


def test_a_damaged_sample_on_disk_is_named_and_generated_again_once_deleted(tmp_path):
    p = tmp_path / "damaged.yaml"
    p.write_text("""suite: damaged
version: 1
dataset: {name: shapes, resolution: 16, num_captions: 8, train_size: 1, pairs_size: 1}
generation: {batch_size: 8, seeds: [0], warmup: false}
systems: [{name: noise}]
metrics: [{name: throughput}]
""")
    suite = load_suite(p)
    Runner(suite, out_dir=tmp_path / "r", progress=False).run()
    png = sorted((tmp_path / "r" / "samples" / "noise" / "seed0").glob("*.png"))[3]
    whole = png.read_bytes()
    png.write_bytes(whole[: len(whole) // 2])  # a disk that filled up, a copy cut short
    with pytest.raises(UserError, match=rf"{png.name}: not a readable sample image .*delete it and run again"):
        Runner(suite, out_dir=tmp_path / "r", progress=False).run()
    png.unlink()
    Runner(suite, out_dir=tmp_path / "r", progress=False).run()
    assert png.read_bytes() == whole


def test_caption_seed_is_stable_and_distinct():
    assert caption_seed(0, 1) == caption_seed(0, 1)
    assert len({caption_seed(s, c) for s in range(3) for c in range(100)}) == 300


def test_a_system_with_its_own_seeds_generates_and_is_measured_only_for_those(tmp_path):
    p = tmp_path / "seeds.yaml"
    p.write_text("""suite: seeds
version: 1
dataset: {name: shapes, resolution: 16, num_captions: 8, train_size: 1, pairs_size: 1}
generation: {batch_size: 8, seeds: [0, 3, 5], warmup: false}
systems: [{name: real-images}, {name: noise, seeds: [3]}]
metrics: [{name: throughput}]
""")
    suite = load_suite(p)
    assert suite.seeds_of("noise") == (3,) and suite.seeds_of("real-images") == (0, 3, 5)
    Runner(suite, out_dir=tmp_path / "r", progress=False).run()
    assert sorted(d.name for d in (tmp_path / "r" / "samples" / "noise").iterdir()) == ["seed3"]
    assert len(list((tmp_path / "r" / "samples" / "real-images").iterdir())) == 3
    df = pd.read_csv(tmp_path / "r" / "results.csv")
    assert set(df[df["system"] == "noise"]["seed"]) == {3}
    assert set(df[df["system"] == "real-images"]["seed"]) == {0, 3, 5}


def _trained_suite(tmp_path, vqgan_steps: int):
    p = tmp_path / f"trained{vqgan_steps}.yaml"
    p.write_text(f"""suite: stale
version: 1
dataset: {{name: shapes, resolution: 32, num_captions: 8, train_size: 64, pairs_size: 1}}
generation: {{batch_size: 8, seeds: [0], warmup: false}}
components:
  vqgan: {{kind: vqgan, train: {{preset: tiny, steps: {vqgan_steps}, batch_size: 4}}}}
systems: [{{name: vqgan-recon, args: {{vqgan: vqgan}}}}, {{name: real-images}}]
metrics: [{{name: throughput}}]
""")
    return load_suite(p)


def _stamps(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")}


def test_samples_made_by_another_build_are_generated_again(tmp_path, capsys):
    """Resume reuses a sample only if the same build made it: retraining a component (another key) regenerates
    what depends on it, and nothing else; a folder without made-by.json (an older run) is regenerated too."""
    out, cache = tmp_path / "r", tmp_path / "cache"
    recon, real = out / "samples" / "vqgan-recon" / "seed0", out / "samples" / "real-images" / "seed0"
    Runner(_trained_suite(tmp_path, 2), out_dir=out, progress=False, cache=cache).run()
    first_recon, first_real = _stamps(recon), _stamps(real)
    made = json.loads((recon / "made-by.json").read_text())
    assert len(first_recon) == 8 and any(a.startswith("vqgan/") for a in made["artefacts"])
    rows = pd.read_csv(out / "results.csv")
    assert {json.loads(e)["samples_made_by"] for e in rows[rows["system"] == "vqgan-recon"]["extra"]} == \
        {made["fingerprint"]}

    Runner(_trained_suite(tmp_path, 2), out_dir=out, progress=False, cache=cache).run()  # same build: a resume
    assert _stamps(recon) == first_recon and _stamps(real) == first_real
    assert "[samples]" not in capsys.readouterr().out

    Runner(_trained_suite(tmp_path, 3), out_dir=out, progress=False, cache=cache).run()  # the VQGAN retrained
    assert "[samples] vqgan-recon seed 0: the 8 samples on disk came from another build" in capsys.readouterr().out
    again = _stamps(recon)
    assert len(again) == 8 and all(again[name] != t for name, t in first_recon.items())
    assert json.loads((recon / "made-by.json").read_text())["fingerprint"] != made["fingerprint"]
    assert _stamps(real) == first_real, "real-images does not use the VQGAN"
    timing_lines = (out / "timings" / "vqgan-recon" / "seed0.jsonl").read_text().splitlines()
    assert len(timing_lines) == 1, "the stale samples' timings go with them"

    (real / "made-by.json").unlink()  # as an earlier version of bench left it
    Runner(_trained_suite(tmp_path, 3), out_dir=out, progress=False, cache=cache).run()
    assert "[samples] real-images seed 0: the 8 samples on disk came from an unrecorded build" \
        in capsys.readouterr().out
    assert all(t != first_real[name] for name, t in _stamps(real).items())


def test_made_by_names_all_captions_and_stale_seeds_leave_the_intervals(tmp_path, monkeypatch):
    """random-caption draws from every eval caption, so num_captions changes its samples even for the ids kept;
    per-caption files of seeds the suite no longer runs are dropped; rows carry the run's provenance."""
    out, cache = tmp_path / "r", tmp_path / "cache"
    text = ("suite: mb\nversion: 1\ndataset: {name: shapes, resolution: 32, num_captions: N, train_size: 1, "
            "pairs_size: 64}\ngeneration: {batch_size: 4, seeds: SEEDS}\n"
            "components: {judge: {kind: attribute-judge, train: {steps: 3}}}\nsystems: [{name: real-images}]\n"
            "metrics: [{name: attribute-accuracy, args: {judge: judge}}]\n")
    path = tmp_path / "mb.yaml"

    def run(n, seeds, limit=None):
        path.write_text(text.replace("N", str(n)).replace("SEEDS", seeds))
        Runner(load_suite(path), out_dir=out, progress=False, cache=cache, limit=limit).run()
        return json.loads((out / "samples" / "real-images" / "seed0" / "made-by.json").read_text())

    first = run(8, "[0, 1]", limit=4)
    assert run(12, "[0, 1]", limit=4)["captions"] != first["captions"]
    assert sorted(p.name for p in (out / "per_caption" / "real-images").iterdir()) == ["seed0.json", "seed1.json"]
    run(12, "[0]", limit=4)
    assert sorted(p.name for p in (out / "per_caption" / "real-images").iterdir()) == ["seed0.json"]
    extra = json.loads(pd.read_csv(out / "results.csv")["extra"].iloc[0])
    assert extra["limit"] == 4 and extra["suite_hash"] == load_suite(path).hash()
    assert list(extra["components_made_of"]) == ["judge"]  # the judge behind the number
    import bench.cache

    assert extra["machine"] == bench.cache.machine_name("cpu")  # the processor behind the number
    before = run(12, "[0]", limit=4)
    assert before["platform"]["machine"] == extra["machine"] and before["platform"]["libraries"]["torch"]
    monkeypatch.setattr(bench.cache, "machine_name", lambda device: "Another CPU @ 3.0GHz")
    assert run(12, "[0]", limit=4)["fingerprint"] != before["fingerprint"]  # samples of another machine: made again


def test_made_by_changes_with_the_systems_args_the_dataset_and_the_sample_code(tmp_path, monkeypatch):
    """Samples are reused only when their fingerprint matches: a sampling argument that no artefact records
    (top_k), another dataset with the same captions (another train_size) or edited seeding / writing code must
    each change it."""
    import bench.runner
    from bench.datasets.base import build_dataset

    class SameArtefacts:  # what a Builder answers; the artefacts are held equal so only the other fields count
        def made_of(self, item):
            return ["clipgen-gpt/0123"]

    def fingerprint(top_k: int = 50, train_size: int = 1) -> str:
        path = tmp_path / "s.yaml"
        path.write_text(f"""suite: mb
version: 1
dataset: {{name: shapes, resolution: 32, num_captions: 8, train_size: {train_size}, pairs_size: 1}}
components:
  clip: {{kind: clip, train: {{preset: tiny}}}}
  vqgan: {{kind: vqgan, train: {{preset: tiny}}}}
systems: [{{name: clipgen, alias: lf, args: {{clip: clip, vqgan: vqgan, train: {{preset: tiny}}, top_k: {top_k}}}}}]
""")
        suite = load_suite(path)
        return Runner(suite, out_dir=tmp_path / "r").made_by(SameArtefacts(), build_dataset(suite.dataset), "lf")[
            "fingerprint"]

    base = fingerprint()
    assert fingerprint() == base
    assert fingerprint(top_k=20) != base
    assert fingerprint(train_size=2) != base
    real = bench.runner.code_fingerprint
    monkeypatch.setattr(bench.runner, "code_fingerprint", lambda *names: real(*names) + "-edited")
    assert fingerprint() != base


def test_made_of_names_wrapped_systems_and_checkpoint_contents(tmp_path):
    """A wrapping system (random-caption) is made of the wrapped one's arguments and artefacts; a checkpoint folder
    rewritten in place is another build, whatever its folder's own mtime says."""
    from bench.build import Builder
    from bench.datasets.base import build_dataset
    from reference.checkpoint import save_vqgan
    from reference.configs import get_preset
    from reference.vqgan import VQGAN

    ckpt = tmp_path / "vqgan"
    save_vqgan(ckpt, VQGAN(get_preset("tiny").vqgan))
    p = tmp_path / "wrapped.yaml"

    def made_of(inner_vqgan: str) -> dict:
        p.write_text(f"""suite: wrapped
version: 1
dataset: {{name: shapes, resolution: 32, num_captions: 4, train_size: 1, pairs_size: 1}}
components:
  vqgan:  {{kind: vqgan, path: {ckpt}}}
  vqgan2: {{kind: vqgan, path: {ckpt}}}
systems: [{{name: vqgan-recon, args: {{vqgan: {inner_vqgan}}}}}, {{name: random-caption, args: {{of: vqgan-recon}}}}]
""")
        suite = load_suite(p)
        builder = Builder(suite, build_dataset(suite.dataset), "cpu", str(tmp_path / "cache"), progress=False)
        builder.system("random-caption")  # builds vqgan-recon inside it
        return {alias: builder.made_of(("system", alias)) for alias in ("vqgan-recon", "random-caption")}

    first = made_of("vqgan")
    assert set(first["vqgan-recon"]) < set(first["random-caption"])
    assert made_of("vqgan") == first
    assert made_of("vqgan2")["random-caption"] != first["random-caption"]  # only the wrapped system changed
    torch.manual_seed(1)
    time.sleep(0.01)
    save_vqgan(ckpt, VQGAN(get_preset("tiny").vqgan))  # new weights, same folder
    rewritten = made_of("vqgan")
    assert rewritten["vqgan-recon"] != first["vqgan-recon"] and rewritten["random-caption"] != first["random-caption"]


def test_a_shard_refuses_a_folder_of_another_build_and_deletes_nothing(tmp_path):
    out, cache = tmp_path / "r", tmp_path / "cache"
    Runner(_trained_suite(tmp_path, 2), out_dir=out, progress=False, cache=cache).run()
    recon = out / "samples" / "vqgan-recon" / "seed0"
    before = _stamps(recon)
    shard = Runner(_trained_suite(tmp_path, 3), out_dir=out, progress=False, cache=cache, rank=1, world=2)
    with pytest.raises(UserError, match="holds samples of another build"):
        shard.run_shard()
    assert _stamps(recon) == before
    Runner(_trained_suite(tmp_path, 3), out_dir=out, progress=False, cache=cache).run()  # the coordinator renews it
    shard = Runner(_trained_suite(tmp_path, 3), out_dir=out, progress=False, cache=cache, rank=1, world=2)
    shard.run_shard()  # now the same build: nothing to do
    assert len(_stamps(recon)) == 8 and all(t != before[n] for n, t in _stamps(recon).items())


def test_a_modality_gap_without_repeated_captions_leaves_out_the_image_image_row(tmp_path):
    """Image-image cosine compares images of one caption: 4 distinct captions have none, so no row (not a NaN)."""
    p = tmp_path / "gap.yaml"
    p.write_text("suite: gap\nversion: 1\n"
                 "dataset: {name: shapes, resolution: 16, num_captions: 4, train_size: 1, pairs_size: 16}\n"
                 "generation: {batch_size: 4, warmup: false}\n"
                 "components: {clip: {kind: clip, train: {preset: tiny, steps: 1, batch_size: 8}}}\n"
                 "systems: [{name: noise}]\nmetrics: [{name: throughput}]\n")
    df = Runner(load_suite(p), out_dir=tmp_path / "run", progress=False).run().frame()
    gap = df[df["metric"] == "modality-gap"]
    assert sorted(gap["variant"]) == ["image-text-cosine", "mean-difference-norm"] and gap["value"].notna().all()


def test_a_row_carries_every_key_of_its_systems_provenance_and_the_metrics_own_win(tmp_path):
    from bench.api import MetricValue
    from bench.results import measured_row

    (tmp_path / "s.yaml").write_text("suite: s\nversion: 1\ndataset: {name: shapes}\nsystems: [{name: noise}]\n"
                                     "metrics: [{name: throughput}]\n")
    suite = load_suite(tmp_path / "s.yaml")

    class Made:
        uses_captions = False

        def provenance(self):
            return {"training": {"steps": 7}, "sampler": "ddim-50", "note": "the system's"}

    value = MetricValue("throughput", "images/s", 3.0, 8, extra={"note": "the metric's"})
    extra = json.loads(measured_row(suite, suite.systems[0], Made(), suite.metrics[0], value, 0, "cpu",
                                    run={"run": "r"})["extra"])
    assert extra == {"training": {"steps": 7}, "sampler": "ddim-50", "note": "the metric's", "run": "r"}


def test_a_one_image_call_is_timed_and_credited_as_the_two_images_it_made(tmp_path):
    """The last batch of one runs as two identical rows (see Runner.generate): throughput credits both images,
    since both were made in the timed seconds."""
    path = tmp_path / "odd.yaml"
    path.write_text("suite: odd\nversion: 1\ndataset: {name: shapes, resolution: 32, num_captions: 5}\n"
                    "generation: {batch_size: 4, seeds: [0]}\nsystems: [{name: real-images}]\n"
                    "metrics: [{name: throughput}]\n")
    out = tmp_path / "r"
    Runner(load_suite(path), out_dir=out, progress=False, cache=tmp_path / "cache").run()
    records = [json.loads(line) for line in (out / "timings" / "real-images" / "seed0.jsonl").read_text().splitlines()]
    assert [r["images"] for r in records] == [4, 2]
    assert len(list((out / "samples" / "real-images" / "seed0").glob("*.png"))) == 5
    rows = pd.read_csv(out / "results.csv")
    seconds = sum(r["seconds"] for r in records)
    per_image = rows[(rows["metric"] == "throughput") & (rows["variant"] == "seconds/image")]
    assert per_image["value"].iloc[0] == pytest.approx(seconds / 6)


def test_the_peak_memory_is_reset_before_each_system_and_seed_generates(tmp_path, monkeypatch):
    """Each (system, seed) pass starts a fresh peak before its first timed call (which writes its first PNG)."""
    import bench.runner

    out, images_at_reset = tmp_path / "r", []
    monkeypatch.setattr(bench.runner, "_reset_peak_memory",
                        lambda device: images_at_reset.append(len(list((out / "samples").rglob("*.png")))))
    Runner(_suite(tmp_path, 8), out_dir=out, limit=8, progress=False).run()
    assert images_at_reset == [0, 8, 16, 24]  # 2 systems x 2 seeds, 8 captions each


def test_per_caption_columns_fill_the_split_and_all_captions_columns():
    from bench.runner import per_caption_columns

    assert per_caption_columns({"caps": .5}, "seen", {"caps/seen", "caps/all"}) == {"caps/seen": .5, "caps/all": .5}
    assert per_caption_columns({"attribute-accuracy": .25}, "seen",
                               {"attribute-accuracy/seen/all", "attribute-accuracy/all/all", "caps/all"}) == \
        {"attribute-accuracy/seen/all": .25, "attribute-accuracy/all/all": .25}


def test_a_shard_refuses_a_folder_of_unrecorded_samples_and_deletes_nothing(tmp_path):
    """PNGs without made-by.json (an older bench's run): only the coordinator may regenerate them."""
    out = tmp_path / "r"
    folder = out / "samples" / "noise" / "seed0"
    folder.mkdir(parents=True)
    for cid in range(3):
        (folder / f"{cid:06d}.png").write_bytes(b"an older run's sample %d" % cid)
    before = {p.name: p.read_bytes() for p in folder.glob("*.png")}
    shard = Runner(_suite(tmp_path, 8), out_dir=out, progress=False, rank=1, world=2)
    with pytest.raises(UserError, match="holds samples of another build"):
        shard.run_shard()
    assert {p.name: p.read_bytes() for p in folder.glob("*.png")} == before
    assert not (folder / "made-by.json").exists()
