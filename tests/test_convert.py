"""`bench convert` / reference.loaders.convert: a foreign checkpoint once into our safetensors folder."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from test_loaders import _save_ref_gpt, _small_vqgan_state, fmt, hfailab_to_taming  # noqa: E402

from bench.cli_convert import convert as convert_cmd  # noqa: E402
from reference.checkpoint import read_config  # noqa: E402
from reference.loaders import convert, load_converted, load_pretrained, verify_sums  # noqa: E402


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_convert_gpt_round_trip_and_sums(tmp_path):
    src = tmp_path / "gpt_coco.pt"
    _save_ref_gpt(src, d=128, h=2)
    out = convert("hfailab-gpt", src, tmp_path / "gpt")
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "config.json", "SHA256SUMS"}
    kind, cfg, meta = read_config(out)
    assert kind == "gpt" and cfg.n_head == 2 and cfg.n_embd == 128
    assert meta["converted_from"]["kind"] == "hfailab-gpt"
    assert meta["converted_from"]["sha256"] == _sha(src)
    assert meta["converted_from"]["dropped_prefixes"] == ["blocks"]  # the mask buffers
    assert set(meta["converted_from"]["ignored_entries"]) == {"epoch", "optimizer", "scaler", "step", "val_loss"}
    sums = dict(line.split()[::-1] for line in (out / "SHA256SUMS").read_text().splitlines())
    assert sums == {"model.safetensors": _sha(out / "model.safetensors"), "config.json": _sha(out / "config.json")}

    direct = load_pretrained("hfailab-gpt", src)
    for kind_arg in ("checkpoint", "auto"):
        again = load_pretrained(kind_arg, out)
        cond = torch.randn(2, 24, generator=torch.Generator().manual_seed(0))
        tokens = torch.randint(0, 40, (2, 15), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            assert torch.equal(again(cond, tokens), direct(cond, tokens))


def test_tampered_weights_fail_the_checksum(tmp_path):
    src = tmp_path / "gpt_coco.pt"
    _save_ref_gpt(src)
    out = convert("auto", src, tmp_path / "gpt")
    verify_sums(out)
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256 differs") as e:
        load_converted(out)
    assert "model.safetensors" in str(e.value) and "\n" not in str(e.value)
    load_converted(out, verify=False)  # still loadable when asked not to check


def test_convert_taming_vqgan_matches_direct_load(tmp_path):
    cfg, sd = _small_vqgan_state(seed=3)
    taming = hfailab_to_taming(sd, fmt("hfailab-clipgen-vqgan.json")["key_map_to_taming"])
    src = tmp_path / "last.ckpt"
    torch.save({"state_dict": taming, "epoch": 2, "global_step": 9}, src)
    out = convert("taming-vqgan", src, tmp_path / "vq", norm_groups=4, grid=2)
    kind, saved_cfg, meta = read_config(out)
    assert kind == "vqgan" and saved_cfg.norm_eps == 1e-6 and saved_cfg.codebook_weight == 0.25
    assert saved_cfg.resolution == 32
    a = load_pretrained("taming-vqgan", src, norm_groups=4, grid=2)
    b = load_pretrained("auto", out)
    imgs = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.reconstruct(imgs), b.reconstruct(imgs))


def test_cli_convert_success_and_errors(tmp_path):
    runner = CliRunner()
    src = tmp_path / "gpt_coco.pt"
    _save_ref_gpt(src)
    res = runner.invoke(convert_cmd, ["hfailab-gpt", str(src), str(tmp_path / "ok")])
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output and (tmp_path / "ok" / "SHA256SUMS").is_file()

    res = runner.invoke(convert_cmd, ["hfailab-gpt", str(src), str(tmp_path / "ok2"), "--set", "n_head=4"])
    assert res.exit_code == 0, res.output
    assert read_config(tmp_path / "ok2")[1].n_head == 4

    def fails(args, *parts):
        r = runner.invoke(convert_cmd, args)
        assert r.exit_code == 2, r.output
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), r.output
        for p in parts:
            assert p in lines[0], lines[0]

    # wrong kind for the file: names the file and the first key it lacks
    fails(["hfailab-vqgan", str(src), str(tmp_path / "x")], str(src), "encoder.conv_in.weight")
    fails(["hfailab-gpt", str(tmp_path / "none.pt"), str(tmp_path / "x")], "not found")
    fails(["hfailab-gpt", str(src), str(tmp_path / "x"), "--set", "n_heads=2"], "n_heads")
    fails(["hfailab-gpt", str(src), str(tmp_path / "x"), "--set", "oops"], "KEY=VALUE")
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(src.read_bytes()[:1000])
    fails(["hfailab-gpt", str(truncated), str(tmp_path / "x")], str(truncated), "truncated")
    good = torch.load(src, weights_only=True)
    good["model"]["blocks.0.encoder.norm1.weight"] = torch.zeros(3)
    bad = tmp_path / "bad.pt"
    torch.save(good, bad)
    fails(["hfailab-gpt", str(bad), str(tmp_path / "x")], str(bad), "blocks.0.encoder.norm1.weight", "[3]")
    assert not (tmp_path / "x").exists()  # nothing half-written
    json.loads((tmp_path / "ok" / "config.json").read_text())


def _hostile_pickle(path: Path, marker: Path) -> None:
    """A plain pickle (not a torch.save file) whose loading would run a shell command."""
    import os
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path.write_bytes(pickle.dumps({"model": Payload()}, protocol=4))


def test_cli_hostile_pickle_is_one_line_without_torchs_advice_or_warning(tmp_path):
    src, marker = tmp_path / "junk.pt", tmp_path / "RAN"
    _hostile_pickle(src, marker)
    for kind in ("hfailab-gpt", "auto"):
        r = CliRunner().invoke(convert_cmd, [kind, str(src), str(tmp_path / "x")])
        assert r.exit_code == 2, r.output
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: {src}: not a torch checkpoint we can read safely"), \
            r.output  # no torch UserWarning before it
        assert "weights_only" not in lines[0] and "Re-running" not in lines[0], lines[0]
        assert "Unsupported operand" in lines[0]  # what the weights-only reader refused, without the advice
    assert not marker.exists() and not (tmp_path / "x").exists()


def test_cli_auto_lists_the_kinds_convert_accepts(tmp_path):
    from bench.cli_convert import KIND_CHOICES

    src = tmp_path / "other.pt"
    torch.save({"foo": torch.zeros(2), "bar": 1}, src)
    r = CliRunner().invoke(convert_cmd, ["auto", str(src), str(tmp_path / "x")])
    assert r.exit_code == 2, r.output
    listed = r.output.strip().rpartition("one of ")[2].split(", ")
    assert listed == [k for k in KIND_CHOICES if k != "auto"], r.output
    assert not (tmp_path / "x").exists()
