"""The clipgen system with a GPT loaded by path: it must fit the suite's VQGAN and CLIP, or the run stops at build;
and what a built system says it was made with (the components behind clip-score's evaluator flag)."""
from click.testing import CliRunner

from bench.cli import cli
from reference.checkpoint import save_gpt, save_vqgan
from reference.clip import init_clip, save_clip
from reference.configs import get_preset, with_overrides
from reference.gpt import GPT
from reference.vqgan import VQGAN

TINY = get_preset("tiny")


def _run(tmp_path, gpt_cfg):
    clip = init_clip("tiny")
    save_clip(clip, str(tmp_path / "clip"))
    vqgan = VQGAN(TINY.vqgan)
    save_vqgan(tmp_path / "vqgan", vqgan)
    save_gpt(tmp_path / "gpt", GPT(with_overrides(gpt_cfg, cond_dim=clip.embed_dim)))
    suite = tmp_path / "loaded.yaml"
    suite.write_text(f"""suite: loaded
version: 1
dataset: {{name: shapes, resolution: {TINY.vqgan.resolution}, num_captions: 2}}
generation: {{seeds: [0]}}
components:
  clip: {{kind: clip, path: {tmp_path / 'clip'}}}
  vqgan: {{kind: vqgan, path: {tmp_path / 'vqgan'}}}
systems:
  - {{name: clipgen, args: {{clip: clip, vqgan: vqgan, path: {tmp_path / 'gpt'}}}}}
metrics: []
""")
    out = tmp_path / "run"
    return CliRunner().invoke(cli, ["run", str(suite), "--out", str(out), "--quiet"]), out


def test_a_loaded_gpt_that_fits_generates(tmp_path):
    small = with_overrides(TINY.gpt, n_layer=1, n_embd=32, n_head=2, ffn_dim=64)
    result, out = _run(tmp_path, small)
    assert result.exit_code == 0, result.output
    assert len(list((out / "samples" / "clipgen" / "seed0").glob("*.png"))) == 2


def test_a_loaded_gpt_for_another_codebook_stops_the_run_at_build(tmp_path):
    other = with_overrides(TINY.gpt, n_layer=1, n_embd=32, n_head=2, ffn_dim=64, vocab_size=TINY.gpt.vocab_size * 2)
    result, out = _run(tmp_path, other)
    assert result.exit_code == 2, result.output
    assert f"{TINY.gpt.vocab_size * 2} codes" in result.output and "does not fit VQGAN 'vqgan'" in result.output
    assert not list(out.glob("samples/*/*/*.png"))


def test_made_with_names_every_clip_behind_a_system_by_its_weights(tmp_path):
    from bench.build import Builder
    from bench.datasets.base import build_dataset
    from bench.suite import load_suite

    clip = init_clip("tiny")
    save_clip(clip, str(tmp_path / "clip"))
    save_clip(init_clip("tiny-eval"), str(tmp_path / "clip-eval"))
    save_vqgan(tmp_path / "vqgan", VQGAN(TINY.vqgan))
    gpt = with_overrides(TINY.gpt, n_layer=1, n_embd=32, n_head=2, ffn_dim=64, cond_dim=clip.embed_dim)
    save_gpt(tmp_path / "gpt", GPT(gpt))
    suite = tmp_path / "made-with.yaml"
    suite.write_text(f"""suite: made-with
version: 1
dataset: {{name: shapes, resolution: {TINY.vqgan.resolution}, num_captions: 2}}
components:
  clip: {{kind: clip, path: {tmp_path / 'clip'}}}
  clip-copy: {{kind: clip, path: {tmp_path / 'clip'}}}
  clip-eval: {{kind: clip, path: {tmp_path / 'clip-eval'}}}
  vqgan: {{kind: vqgan, path: {tmp_path / 'vqgan'}}}
systems:
  - {{name: clipgen, args: {{clip: clip, vqgan: vqgan, path: {tmp_path / 'gpt'}}}}}
  - {{name: clipgen, alias: reranked, args: {{clip: clip, vqgan: vqgan, path: {tmp_path / 'gpt'}, candidates: 2,
      rerank_clip: clip-eval}}}}
  - {{name: random-caption, args: {{of: clipgen}}}}
  - {{name: real-images}}
""")
    s = load_suite(suite)
    builder = Builder(s, build_dataset(s.dataset), "cpu", str(tmp_path / "cache"), progress=False)
    for alias in ("clipgen", "reranked", "random-caption", "real-images"):
        builder.system(alias)
    made_with = {(a, c) for a in ("clipgen", "reranked", "random-caption", "real-images")
                 for c in ("clip", "clip-copy", "clip-eval") if builder.made_with(a, c)}
    assert made_with == {("clipgen", "clip"), ("clipgen", "clip-copy"),  # the same weights under another name
                         ("reranked", "clip"), ("reranked", "clip-copy"), ("reranked", "clip-eval"),  # re-ranked
                         ("random-caption", "clip"), ("random-caption", "clip-copy")}  # through what it wraps


def test_a_damaged_checkpoint_is_one_line_and_leaves_no_run_folder(tmp_path):
    import json

    small = with_overrides(TINY.gpt, n_layer=1, n_embd=32, n_head=2, ffn_dim=64)
    _run(tmp_path, small)  # writes the checkpoints
    weights = tmp_path / "vqgan" / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])  # a copy cut short
    result, out = _run_again(tmp_path)
    assert result.exit_code == 2 and "not a readable safetensors file" in result.output, result.output
    assert result.output.count("\n") == 1 and not out.exists()
    weights.write_bytes(good)
    config = tmp_path / "gpt" / "config.json"
    doc = json.loads(config.read_text())
    doc["config"]["n_layer"] += 1  # a config that does not describe the weights beside it
    config.write_text(json.dumps(doc))
    result, out = _run_again(tmp_path)
    assert result.exit_code == 2 and "do not fit the gpt its config.json describes" in result.output, result.output
    assert result.output.count("\n") == 1 and not out.exists()


def _run_again(tmp_path):
    out = tmp_path / "again"
    return CliRunner().invoke(cli, ["run", str(tmp_path / "loaded.yaml"), "--out", str(out), "--quiet"]), out


def test_a_loaded_vqgan_for_another_resolution_stops_the_run_at_build(tmp_path):
    small = with_overrides(TINY.gpt, n_layer=1, n_embd=32, n_head=2, ffn_dim=64)
    _run(tmp_path, small)  # writes the checkpoints and the suite
    suite = tmp_path / "loaded.yaml"
    res = TINY.vqgan.resolution
    suite.write_text(suite.read_text().replace(f"resolution: {res}", f"resolution: {res * 2}"))
    result, out = _run_again(tmp_path)
    assert result.exit_code == 2 and f"works at {res} px, the dataset at {res * 2} px" in result.output, result.output
    assert not out.exists()
