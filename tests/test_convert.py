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


def _one_error_line(r, *parts):
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    for p in parts:
        assert p in lines[0], lines[0]


def test_cli_convert_writes_no_temporary_folder_and_keeps_the_usual_mode(tmp_path):
    src = tmp_path / "gpt_coco.pt"
    _save_ref_gpt(src)
    (tmp_path / "out").mkdir()  # an existing empty folder is fine
    for name in ("out", "new/deeper"):
        r = CliRunner().invoke(convert_cmd, ["hfailab-gpt", str(src), str(tmp_path / name)])
        assert r.exit_code == 0, r.output
        assert {p.name for p in (tmp_path / name).iterdir()} == {"model.safetensors", "config.json", "SHA256SUMS"}
        verify_sums(tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt_coco.pt", "new", "out"]  # no temporary folder
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["deeper"]
    (tmp_path / "plain").mkdir()
    assert (tmp_path / "new" / "deeper").stat().st_mode == (tmp_path / "plain").stat().st_mode


@pytest.mark.parametrize("dst", ["", "  "])
def test_cli_convert_refuses_an_empty_dst_name(tmp_path, monkeypatch, dst):
    src = tmp_path / "gpt_coco.pt"
    _save_ref_gpt(src)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    _one_error_line(CliRunner().invoke(convert_cmd, ["hfailab-gpt", str(src), dst]), f"DST {dst!r}", "name a folder")
    assert list(work.iterdir()) == []  # not written into the current folder


def test_cli_convert_refuses_a_non_empty_dst(tmp_path):
    src = tmp_path / "gpt_coco.pt"
    _save_ref_gpt(src)
    used = tmp_path / "used"
    used.mkdir()
    (used / "config.json").write_text("mine")
    _one_error_line(CliRunner().invoke(convert_cmd, ["hfailab-gpt", str(src), str(used)]),
                    str(used), "exists and is not empty")
    assert [p.name for p in used.iterdir()] == ["config.json"] and (used / "config.json").read_text() == "mine"


@pytest.mark.parametrize("dst, why", [
    ("afile/out", "afile is not a folder"),  # the parent is a regular file
    ("afile/a/b", "afile is not a folder"),
    ("loop", "exists and is not a folder"),  # a symlink loop
])
def test_cli_convert_dst_that_cannot_be_made_is_one_line(tmp_path, dst, why):
    src = tmp_path / "gpt_coco.pt"
    _save_ref_gpt(src)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "loop").symlink_to("loop")
    before = sorted(p.name for p in tmp_path.iterdir())
    r = CliRunner().invoke(convert_cmd, ["hfailab-gpt", str(src), str(tmp_path / dst)])
    _one_error_line(r, str(tmp_path / dst), why)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize("error", [
    OSError(28, "No space left on device"),
    OSError(30, "Read-only file system"),
    "safetensors",
])
def test_cli_convert_failed_write_leaves_nothing(tmp_path, monkeypatch, error):
    import reference.checkpoint
    from safetensors import SafetensorError

    if error == "safetensors":
        error = SafetensorError("Error while serializing: No space left on device")
    reason = error.strerror if isinstance(error, OSError) else "No space left on device"
    real_save = reference.checkpoint.save_file

    def half_then_fail(state, path):  # part of the file lands, then the disk is full / read-only
        real_save(state, path)
        Path(path).write_bytes(Path(path).read_bytes()[:100])
        raise error

    monkeypatch.setattr(reference.checkpoint, "save_file", half_then_fail)
    src = tmp_path / "gpt_coco.pt"
    _save_ref_gpt(src)
    dst = tmp_path / "made" / "for" / "dst"
    _one_error_line(CliRunner().invoke(convert_cmd, ["hfailab-gpt", str(src), str(dst)]), str(dst), reason)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt_coco.pt"]  # no DST, temp folder or made parents

    (tmp_path / "empty").mkdir()  # an existing empty DST stays as it was
    _one_error_line(CliRunner().invoke(convert_cmd, ["hfailab-gpt", str(src), str(tmp_path / "empty")]), reason)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "gpt_coco.pt"]
    assert list((tmp_path / "empty").iterdir()) == []


@pytest.mark.parametrize("text, wants", [
    ("n_head=abc", "n_head must be an integer >= 1"),
    ('n_head="2"', "n_head must be an integer >= 1"),
    ("n_head=[1]", "n_head must be an integer >= 1"),
    ("n_head=0", "n_head must be an integer >= 1"),
    ("n_head=-1", "n_head must be an integer >= 1"),
    ("n_head=true", "n_head must be an integer >= 1"),
    ("dropout=x", "dropout must be a number >= 0"),
    ("betas=[0.9]", "betas must be a list of 2 numbers >= 0"),
    ("decode_backend=3", "decode_backend must be a string"),
    ("keep_discriminator=abc", "use the --keep-discriminator flag"),
])
def test_cli_set_values_are_type_checked(tmp_path, text, wants):
    src = tmp_path / "gpt_coco.pt"
    _save_ref_gpt(src)
    r = CliRunner().invoke(convert_cmd, ["hfailab-gpt", str(src), str(tmp_path / "x"), "--set", text])
    _one_error_line(r, f"--set {text}: {wants}")
    assert not (tmp_path / "x").exists()


def test_cli_set_accepts_well_typed_values(tmp_path):
    src = tmp_path / "gpt_coco.pt"
    _save_ref_gpt(src)  # n_embd 128
    r = CliRunner().invoke(convert_cmd, ["hfailab-gpt", str(src), str(tmp_path / "x"), "--set", "n_head=4",
                                         "--set", "dropout=0", "--set", "warmup=0", "--set", "betas=[0.8, 0.9]"])
    assert r.exit_code == 0, r.output
    cfg = read_config(tmp_path / "x")[1]
    assert (cfg.n_head, cfg.dropout, cfg.warmup, cfg.betas) == (4, 0, 0, (0.8, 0.9))
    load_converted(tmp_path / "x")
