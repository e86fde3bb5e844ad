"""What the checkpoint readers promise beyond "it loads" (reference/loaders.py, reference/checkpoint.py,
reference/safe_unpickle.py): a weight lands in the parameter it belongs to (tensors swapped in a synthetic file show up
swapped, taming's 1x1-conv attention computes what taming's formula computes), the config read from shapes (levels,
widths, attention levels, default 16x16 grid, resolution override, GPT heads / layers / grid) and the refusals around
it (non-square positions, widths that are no multiple of 64, uneven levels, stray or non-1x1 taming tensors, integer
tensors for float weights, negative float overrides), float16 files loaded into float32 models, the HFAiLab
discriminator kept or freshly made, taming transformer checkpoints read through ``first_stage_model.``, auto-detection,
SHA256SUMS checks, our folder format's strict loading, atomic writes and one-line errors for a damaged config.json, and
the restricted unpickler turning every global it does not allow into an inert, recorded stub without running it.
"""
from __future__ import annotations

import json
import pickle
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from test_loaders import RefGPT, _one_line_error, _small_vqgan_state, fmt, hfailab_to_taming  # noqa: E402

from reference.checkpoint import load_checkpoint, load_vqgan, read_config, save_checkpoint, save_gpt  # noqa: E402
from reference.configs import PAPER, get_preset, with_overrides  # noqa: E402
from reference.gpt import GPT  # noqa: E402
from reference.loaders import (OverrideError, build_foreign, convert, detect_kind,  # noqa: E402
                               infer_hfailab_gpt_config, infer_hfailab_vqgan_config, infer_taming_vqgan_config,
                               load_pretrained, verify_sums, write_sums)
from reference.safe_unpickle import Stub, safe_loads, safe_torch_load  # noqa: E402

OVER = dict(norm_groups=4, grid=2)  # what the small paper-structure VQGAN of test_loaders needs


def _ref_gpt(**kw) -> RefGPT:
    torch.manual_seed(0)
    return RefGPT(**kw).eval()


def _save(path: Path, ref: RefGPT) -> Path:
    torch.save({"model": ref.state_dict()}, path)
    return path


def _gpt_inputs(n_pos=16, vocab=40, cond=24):
    g = torch.Generator().manual_seed(5)
    return torch.randn(2, cond, generator=g), torch.randint(0, vocab, (2, n_pos - 1), generator=g)


def _metas(shapes: dict) -> dict[str, torch.Tensor]:
    return {k: torch.empty(v, device="meta") for k, v in shapes.items()}


@pytest.fixture(scope="module")
def small_vqgan():
    """(HFAiLab state dict, taming state dict) of the small paper-structure VQGAN, the taming one through the JSON's
    documented key map (independent of the loader's own map)."""
    _, sd = _small_vqgan_state(seed=1)
    return sd, hfailab_to_taming(sd, fmt("hfailab-clipgen-vqgan.json")["key_map_to_taming"])


# ---------------------------------------------------------------------------------------------------------------
# key mapping: a weight lands where it belongs
# ---------------------------------------------------------------------------------------------------------------

def test_gpt_tensors_swapped_in_the_file_are_swapped_in_the_model(tmp_path):
    ref = _ref_gpt()
    d = 128
    with torch.no_grad():  # q and k rows of block 0's fused projection; block 1's two LayerNorm weights
        w = ref.blocks[0].encoder.self_attn.in_proj_weight
        w.copy_(torch.cat([w[d:2 * d], w[:d], w[2 * d:]]))
        n1, n2 = ref.blocks[1].encoder.norm1.weight, ref.blocks[1].encoder.norm2.weight
        a, b = n1.clone(), n2.clone()
        n1.copy_(b)
        n2.copy_(a)
    path = tmp_path / "gpt.pt"
    torch.save({"model": ref.state_dict()}, path)
    gpt = load_pretrained("hfailab-gpt", path)
    assert torch.equal(gpt.state_dict()["blocks.1.encoder.norm1.weight"], b)
    assert torch.equal(gpt.state_dict()["blocks.1.encoder.norm2.weight"], a)
    cond, tokens = _gpt_inputs()
    with torch.no_grad():
        got, want = gpt(cond, tokens), ref(cond, tokens)
        orig = load_pretrained("hfailab-gpt", _save(tmp_path / "orig.pt", _ref_gpt()))(cond, tokens)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)  # the swapped function, computed by plain torch
    assert (got - orig).abs().max() > 1e-3  # and not the unswapped one


def _taming_attention(x, sd, prefix, eps=1e-6):
    """taming's AttnBlock, written out: GroupNorm, 1x1-conv q/k/v, softmax(q^T k / sqrt(C)), v, 1x1 proj_out."""
    b, c, h, w = x.shape
    hn = F.group_norm(x, 4, sd[prefix + "norm.weight"], sd[prefix + "norm.bias"], eps)
    q, k, v = (F.conv2d(hn, sd[f"{prefix}{n}.weight"], sd[f"{prefix}{n}.bias"]).reshape(b, c, h * w) for n in "qkv")
    att = torch.softmax(torch.bmm(q.permute(0, 2, 1), k) * c ** -0.5, dim=2)  # [b, query, key]
    out = torch.bmm(v, att.permute(0, 2, 1)).reshape(b, c, h, w)
    return x + F.conv2d(out, sd[prefix + "proj_out.weight"], sd[prefix + "proj_out.bias"])


def test_taming_attention_kernels_compute_tamings_attention_and_q_k_swap_follows(tmp_path, small_vqgan):
    _, taming = small_vqgan
    sd = dict(taming)
    prefix = "decoder.mid.attn_1."
    g = torch.Generator().manual_seed(7)
    c = sd[prefix + "q.weight"].shape[0]
    for n in ("q", "k", "v", "proj_out"):  # distinct, non-trivial kernels so any mix-up shows
        sd[f"{prefix}{n}.weight"] = torch.randn(c, c, 1, 1, generator=g) * 0.3
        sd[f"{prefix}{n}.bias"] = torch.randn(c, generator=g) * 0.3
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": sd}, path)
    model = load_pretrained("taming-vqgan", path, **OVER)
    x = torch.randn(2, c, 2, 2, generator=g)
    with torch.no_grad():
        got = model.decoder.mid[1](x)
    torch.testing.assert_close(got, _taming_attention(x, sd, prefix), atol=1e-5, rtol=1e-5)

    swapped = {**sd, prefix + "q.weight": sd[prefix + "k.weight"], prefix + "k.weight": sd[prefix + "q.weight"]}
    torch.save({"state_dict": swapped}, path)
    model2 = load_pretrained("taming-vqgan", path, **OVER)
    fused = model2.state_dict()["decoder.mid.1.attn.in_proj_weight"]
    assert torch.equal(fused[:c], sd[prefix + "k.weight"][:, :, 0, 0])  # the file's "q" slot, whatever it holds
    assert torch.equal(fused[c:2 * c], sd[prefix + "q.weight"][:, :, 0, 0])
    with torch.no_grad():
        torch.testing.assert_close(model2.decoder.mid[1](x), _taming_attention(x, swapped, prefix),
                                   atol=1e-5, rtol=1e-5)


def test_taming_file_with_a_stray_tensor_or_a_non_1x1_attention_kernel_is_refused(tmp_path, small_vqgan):
    _, taming = small_vqgan
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {**taming, "encoder.extra.weight": torch.zeros(2)}}, path)
    with pytest.raises(ValueError) as e:
        load_pretrained("taming-vqgan", path, **OVER)
    _one_line_error(e, path, "unexpected key", "encoder.extra.weight")
    key = "encoder.mid.attn_1.q.weight"
    c = taming[key].shape[0]
    torch.save({"state_dict": {**taming, key: torch.zeros(c, c, 3, 3)}}, path)
    with pytest.raises(ValueError) as e:
        load_pretrained("taming-vqgan", path, **OVER)
    _one_line_error(e, path, key, "1x1 kernel")


def test_taming_transformer_checkpoint_reads_its_first_stage(tmp_path, small_vqgan):
    _, taming = small_vqgan
    sd = {"first_stage_model." + k: v for k, v in taming.items()}
    sd["transformer.tok_emb.weight"] = torch.zeros(4, 2)
    sd["first_stage_model.loss.logvar"] = torch.zeros(())
    path = tmp_path / "transformer.ckpt"
    torch.save({"state_dict": sd, "epoch": 1}, path)
    assert detect_kind(path) == "taming-vqgan"
    model, report = build_foreign("taming-vqgan", path, **OVER)
    assert set(report.dropped) == {"transformer.tok_emb.weight", "first_stage_model.loss.logvar"}
    assert set(report.consumed) == {"first_stage_model." + k for k in taming}
    assert torch.equal(model.decoder.conv_in.weight, taming["decoder.conv_in.weight"])
    assert torch.equal(model.encoder.final[3].weight, taming["quant_conv.weight"])


def test_hfailab_vqgan_discriminator_kept_on_request_else_fresh(tmp_path, small_vqgan):
    hf, _ = small_vqgan
    sd = {k: (v.clone().fill_(0.125) if k.startswith("discriminator.") and v.is_floating_point() else v)
          for k, v in hf.items()}
    disc = {k for k in sd if k.startswith("discriminator.")}
    path = tmp_path / "vqgan_coco.pt"
    torch.save({"model": sd, "epoch": 3}, path)
    assert detect_kind(path) == "hfailab-vqgan"
    kept, report = build_foreign("hfailab-vqgan", path, keep_discriminator=True, **OVER)
    assert report.dropped == {}
    for k in disc:
        assert torch.equal(kept.state_dict()[k], sd[k]), k
    fresh, report = build_foreign("hfailab-vqgan", path, **OVER)
    assert set(report.dropped) == disc
    w = fresh.discriminator.head.weight
    assert not w.is_meta and not torch.all(w == 0.125) and w.std() > 0  # a real random init, not the file's
    assert torch.equal(fresh.quantizer.embedding.weight, sd["quantizer.embedding.weight"])
    out = convert("hfailab-vqgan", path, tmp_path / "conv", **OVER)
    meta = read_config(out)[2]["converted_from"]
    assert meta["dropped_prefixes"] == ["discriminator"] and meta["dropped_keys"] == len(disc)
    assert "freshly initialised" in meta["note"] and meta["ignored_entries"] == ["epoch"]


# ---------------------------------------------------------------------------------------------------------------
# configs from shapes, and their checks
# ---------------------------------------------------------------------------------------------------------------

def test_vqgan_config_from_shapes_default_grid_and_resolution_override():
    from reference.vqgan import VQGAN

    shape_cfg = with_overrides(PAPER.vqgan, ch=8, ch_mult=(1, 2, 4), num_res_blocks=1, attn_resolutions=(64, 16),
                               z_channels=6, embed_dim=5, codebook_size=7, norm_groups=2, resolution=64)
    with torch.device("meta"):
        sd = {k: v for k, v in VQGAN(shape_cfg).state_dict().items() if not k.startswith("discriminator.")}
    cfg = infer_hfailab_vqgan_config(sd)
    assert (cfg.ch, cfg.ch_mult, cfg.num_res_blocks, cfg.z_channels, cfg.embed_dim, cfg.codebook_size,
            cfg.in_channels) == (8, (1, 2, 4), 1, 6, 5, 7, 3)
    assert (cfg.resolution, cfg.attn_resolutions, cfg.grid) == (64, (64, 16), 16)  # 16x16 grid unless told
    cfg = infer_hfailab_vqgan_config(sd, resolution=32)
    assert (cfg.resolution, cfg.attn_resolutions, cfg.grid) == (32, (32, 8), 8)
    cfg = infer_hfailab_vqgan_config(sd, grid=4)
    assert (cfg.resolution, cfg.attn_resolutions) == (16, (16, 4))
    # the paper's files, by their documented shapes
    hf = {k: v for k, v in fmt("hfailab-clipgen-vqgan.json")["state_dict"].items()
          if not k.startswith("discriminator.")}
    assert infer_hfailab_vqgan_config(_metas(hf)) == PAPER.vqgan
    taming = fmt("taming-vqgan-f16-16384.json")["state_dict"]
    assert infer_taming_vqgan_config(_metas(taming)) == replace(PAPER.vqgan, norm_eps=1e-6, codebook_weight=0.25)
    uneven = {k: v for k, v in taming.items() if not k.startswith("encoder.down.1.block.1.")}
    with pytest.raises(ValueError, match=r"different numbers of residual blocks \[2, 1, 2, 2, 2\]"):
        infer_taming_vqgan_config(_metas(uneven), "x.ckpt")


def _gpt_shapes(vocab=50, d=192, n_pos=36, cond=20, ffn=300, layers=3):
    shapes = {"tok_emb.weight": [vocab, d], "pos_emb": [1, n_pos, d], "cond_proj.weight": [d, cond]}
    for i in range(layers):
        shapes[f"blocks.{i}.encoder.linear1.weight"] = [ffn, d]
    return shapes


def test_gpt_config_from_shapes_and_its_refusals():
    cfg = infer_hfailab_gpt_config(_metas(_gpt_shapes()))
    assert (cfg.vocab_size, cfg.n_embd, cfg.n_head, cfg.n_pos, cfg.grid, cfg.cond_dim, cfg.ffn_dim, cfg.n_layer) \
        == (50, 192, 3, 36, 6, 20, 300, 3)
    assert infer_hfailab_gpt_config(_metas(_gpt_shapes()), n_head=4).n_head == 4
    with pytest.raises(ValueError, match="gpt.pt: pos_emb has 35 positions, not a square token grid"):
        infer_hfailab_gpt_config(_metas(_gpt_shapes(n_pos=35)), "gpt.pt")
    with pytest.raises(ValueError, match="gpt.pt: width 96 is not a multiple of 64; give n_head explicitly"):
        infer_hfailab_gpt_config(_metas(_gpt_shapes(d=96)), "gpt.pt")
    assert infer_hfailab_gpt_config(_metas(_gpt_shapes(d=96)), n_head=4).n_head == 4


@pytest.mark.parametrize("name, value", [("dropout", -0.1), ("ln_eps", -1e-5), ("lr", float("inf"))])
def test_float_overrides_must_be_finite_and_not_negative(tmp_path, name, value):
    path = _save(tmp_path / "gpt.pt", _ref_gpt())
    with pytest.raises(OverrideError, match=f"{name} must be a number >= 0$"):
        load_pretrained("hfailab-gpt", path, **{name: value})


# ---------------------------------------------------------------------------------------------------------------
# masks, dtypes, devices
# ---------------------------------------------------------------------------------------------------------------

def test_gpt_additive_float_masks_are_accepted_and_checked(tmp_path):
    ref = _ref_gpt()
    sd = ref.state_dict()
    additive = torch.zeros(16, 16).masked_fill(torch.ones(16, 16, dtype=torch.bool).triu(1), float("-inf"))
    path = tmp_path / "gpt.pt"
    torch.save({"model": {**sd, "blocks.0.mask": additive, "blocks.1.mask": additive}}, path)
    gpt, report = build_foreign("hfailab-gpt", path)
    assert set(report.dropped) == {"blocks.0.mask", "blocks.1.mask"}
    cond, tokens = _gpt_inputs()
    with torch.no_grad():
        torch.testing.assert_close(gpt(cond, tokens), ref(cond, tokens), atol=1e-5, rtol=1e-5)
    torch.save({"model": {**sd, "blocks.1.mask": torch.zeros(16, 16)}}, path)  # masks nothing: not causal
    with pytest.raises(ValueError) as e:
        load_pretrained("hfailab-gpt", path)
    _one_line_error(e, path, "'blocks.1.mask'", "not the causal mask")


def test_a_float16_release_loads_into_a_float32_model(tmp_path):
    ref = _ref_gpt()
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in ref.state_dict().items()}
    path = tmp_path / "gpt16.pt"
    torch.save({"model": half}, path)
    gpt = load_pretrained("hfailab-gpt", path)
    assert {v.dtype for v in gpt.state_dict().values()} == {torch.float32}
    assert torch.equal(gpt.head.weight, half["head.weight"].float())
    cond, tokens = _gpt_inputs()
    with torch.no_grad():
        assert gpt(cond, tokens).dtype == torch.float32


def test_an_integer_tensor_for_a_float_weight_is_refused(tmp_path):
    sd = _ref_gpt().state_dict()
    path = tmp_path / "gpt.pt"
    torch.save({"model": {**sd, "head.bias": sd["head.bias"].round().long()}}, path)
    with pytest.raises(ValueError) as e:
        load_pretrained("hfailab-gpt", path)
    _one_line_error(e, path, "'head.bias'", "torch.int64")


def test_load_pretrained_puts_the_model_on_the_device_asked_for(tmp_path):
    path = _save(tmp_path / "gpt.pt", _ref_gpt())
    gpt = load_pretrained("hfailab-gpt", path, device="meta")  # any device but the CPU shows it was moved
    assert {p.device.type for p in gpt.parameters()} == {"meta"}


# ---------------------------------------------------------------------------------------------------------------
# converted folders: sums, destination
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture
def converted(tmp_path):
    return convert("hfailab-gpt", _save(tmp_path / "gpt_coco.pt", _ref_gpt()), tmp_path / "conv")


def test_sums_cover_config_json_and_accept_binary_mode_lines(converted):
    sums = converted / "SHA256SUMS"
    lines = sums.read_text().splitlines()
    sums.write_text("".join(f"{ln.replace('  ', ' *', 1)}\n" for ln in lines))  # `sha256sum -b` style
    verify_sums(converted)
    load_pretrained("checkpoint", converted)
    cfg = converted / "config.json"
    cfg.write_text(cfg.read_text().replace('"meta": {', '"meta": {"x": 1, ', 1))  # still valid, different bytes
    with pytest.raises(ValueError, match="config.json: sha256 differs"):
        load_pretrained("auto", converted)


def test_a_malformed_sums_line_is_one_error_naming_the_file(converted):
    sums = converted / "SHA256SUMS"
    sums.write_text(sums.read_text() + "deadbeef\n")
    with pytest.raises(ValueError) as e:
        verify_sums(converted)
    _one_line_error(e, sums)


@pytest.mark.parametrize("kept", ["", "config.json"])
def test_sums_that_leave_out_a_file_verify_nothing_and_are_refused(converted, kept):
    sums = converted / "SHA256SUMS"
    sums.write_text("".join(f"{ln}\n" for ln in sums.read_text().splitlines() if kept and ln.endswith(kept)))
    with pytest.raises(ValueError, match="lists no digest for model.safetensors"):
        verify_sums(converted)
    with pytest.raises(ValueError, match="lists no digest"):
        load_pretrained("checkpoint", converted)


def test_convert_refuses_a_symlink_to_an_empty_folder(tmp_path):
    src = _save(tmp_path / "gpt_coco.pt", _ref_gpt())
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        convert("hfailab-gpt", src, tmp_path / "link")
    assert (tmp_path / "link").is_symlink() and list((tmp_path / "empty").iterdir()) == []


# ---------------------------------------------------------------------------------------------------------------
# our folder format (reference/checkpoint.py)
# ---------------------------------------------------------------------------------------------------------------

SMALL_GPT = with_overrides(get_preset("tiny").gpt, n_layer=1, n_embd=32, n_head=2, ffn_dim=64)


def test_folder_round_trip_with_train_state_and_a_float16_weights_file(tmp_path):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    gpt = GPT(SMALL_GPT)
    state = {"step": 7, "opt": {"m": torch.arange(3.0)}}
    save_gpt(tmp_path / "g", gpt, train_state=state, meta={"note": "x"})
    model, again, meta = load_checkpoint(tmp_path / "g", train_state=True)
    assert again["step"] == 7 and torch.equal(again["opt"]["m"], torch.arange(3.0)) and meta == {"note": "x"}
    weights = tmp_path / "g" / "model.safetensors"
    save_file({k: v.half() for k, v in load_file(str(weights)).items()}, str(weights))
    model, _, _ = load_checkpoint(tmp_path / "g")
    for k, v in gpt.state_dict().items():
        got = model.state_dict()[k]
        assert got.dtype == torch.float32 and torch.equal(got, v.half().float()), k


def test_folder_weights_must_fit_the_config_strictly(tmp_path):
    save_gpt(tmp_path / "g", GPT(SMALL_GPT))
    cfg = tmp_path / "g" / "config.json"
    doc = json.loads(cfg.read_text())
    doc["config"]["n_layer"] = 2  # the weights of one layer for a config of two
    cfg.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="do not fit the gpt its config.json describes") as e:
        load_checkpoint(tmp_path / "g")
    _one_line_error(e, tmp_path / "g" / "model.safetensors", "blocks.1.")
    save_gpt(tmp_path / "h", GPT(SMALL_GPT))
    with pytest.raises(ValueError, match="holds a GPT, not a VQGAN"):
        load_vqgan(tmp_path / "h")
    with pytest.raises(ValueError, match="unknown checkpoint kind 'clip'"):
        save_checkpoint(tmp_path / "i", GPT(SMALL_GPT), "clip")
    assert not (tmp_path / "i" / "model.safetensors").exists()


@pytest.mark.parametrize("text, wants", [
    ("{bad", "is not valid JSON"),
    ('{"kind": "gpt"}', "'config'"),
    ("[1, 2]", "'config'"),
    ('{"kind": "dalle", "config": {}}', "unknown kind 'dalle'"),
    ('{"kind": "gpt", "config": {"n_heads": 2}}', "n_heads"),
    ('{"kind": "gpt", "config": {"n_embd": "wide"}}', "not a valid gpt config"),
])
def test_a_damaged_config_json_is_one_value_error_naming_it(tmp_path, text, wants):
    save_gpt(tmp_path / "g", GPT(SMALL_GPT))
    cfg = tmp_path / "g" / "config.json"
    cfg.write_text(text)
    for kind in ("checkpoint", "auto"):
        with pytest.raises(ValueError) as e:
            load_pretrained(kind, tmp_path / "g")
        _one_line_error(e, cfg, wants)


def test_an_interrupted_save_keeps_the_previous_file_and_leaves_no_partial_one(tmp_path, monkeypatch):
    import reference.checkpoint as ck

    torch.manual_seed(0)
    first = GPT(SMALL_GPT)
    save_gpt(tmp_path / "g", first)
    before = {p.name: p.read_bytes() for p in (tmp_path / "g").iterdir()}
    real = ck.save_file

    def half_then_fail(state, path):
        real(state, path)
        Path(path).write_bytes(Path(path).read_bytes()[:100])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck, "save_file", half_then_fail)
    with pytest.raises(OSError):
        save_gpt(tmp_path / "g", GPT(SMALL_GPT))
    assert {p.name: p.read_bytes() for p in (tmp_path / "g").iterdir()} == before  # nothing half-written left
    monkeypatch.undo()
    model, _, _ = load_checkpoint(tmp_path / "g")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in first.state_dict().items())


# ---------------------------------------------------------------------------------------------------------------
# the restricted unpickler
# ---------------------------------------------------------------------------------------------------------------

class Thing:
    """A class the weights-only reader refuses (it is not allow-listed)."""

    def __init__(self, value):
        self.value = value


class Evil:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w').write('ran')",))


def test_restricted_reader_stubs_unknown_globals_records_them_and_runs_nothing(tmp_path):
    marker = tmp_path / "RAN"
    path = tmp_path / "ckpt.pt"
    w = torch.arange(6.0)
    torch.save({"model": {"w": w}, "hp": Thing({"lr": 0.5}), "evil": Evil(marker), "dtype": torch.float16}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    obj = safe_torch_load(path)
    assert not marker.exists()
    assert torch.equal(obj["model"]["w"], w) and obj["dtype"] is torch.float16
    evil = obj["evil"]
    assert isinstance(evil, Stub) and type(evil).__stub_name__ == "eval"
    assert type(evil).__stub_module__ == "__builtin__"  # torch.save's protocol 2 spells builtins the Python 2 way
    assert evil.stub_args == (f"open({str(marker)!r}, 'w').write('ran')",)
    hp = obj["hp"]
    assert isinstance(hp, Stub) and type(hp).__stub_name__ == "Thing" and hp.stub_state == {"value": {"lr": 0.5}}
    assert type(safe_torch_load(path)["hp"]) is type(hp)  # one stub class per name: usable as a dict key


@pytest.mark.parametrize("module", ["builtins", "__builtin__", "os", "posix", "subprocess"])
def test_restricted_reader_never_resolves_a_dangerous_global(module):
    name = {"os": "system", "posix": "system", "subprocess": "getoutput"}.get(module, "eval")
    data = f"c{module}\n{name}\n(S'1+1'\ntR.".encode()  # protocol 0: GLOBAL, MARK, STRING, TUPLE, REDUCE
    obj = safe_loads(data)
    assert isinstance(obj, Stub) and type(obj).__stub_module__ == module and obj.stub_args == ("1+1",)
    assert safe_loads(b"c__builtin__\nset\n(tR.") == set()  # Python 2's name for an allowed builtin still works


def test_safe_torch_load_reads_into_memory_unless_mmap_is_asked_for(tmp_path):
    path = tmp_path / "w.pt"
    w = torch.arange(4096, dtype=torch.float32) + 0.5
    torch.save({"model": {"w": w}}, path)
    loaded = safe_torch_load(path)
    mapped = safe_torch_load(path, mmap=True)
    at = path.read_bytes().find(w.numpy().tobytes())
    assert at > 0
    with open(path, "r+b") as f:  # the file changes in place after reading
        f.seek(at)
        f.write(bytes(4 * 4096))
    assert torch.equal(loaded["model"]["w"], w)
    assert not mapped["model"]["w"].any()  # a mapped read follows the file (the check above is not vacuous)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_a_save_failing_at_its_last_file_keeps_the_whole_previous_checkpoint(tmp_path, monkeypatch):
    """Training saves weights, config and train_state.pt into one folder: a failure writing train_state.pt must not
    leave the new weights beside the previous step's optimiser state (a resume would then be silently wrong)."""
    import reference.checkpoint as ck

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "g", GPT(SMALL_GPT), "gpt", {"step": 1}, meta={"steps": 1})
    before = _files(tmp_path / "g")

    def full_disk(obj, path):
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", full_disk)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "g", GPT(SMALL_GPT), "gpt", {"step": 2}, meta={"steps": 2})
    assert _files(tmp_path / "g") == before  # every file of step 1, no temporary one


def test_a_save_removes_the_optional_files_of_an_earlier_save(tmp_path):
    """train_state.pt and SHA256SUMS belong to the save that wrote them: a later save without them removes them, so
    neither a stale optimiser state nor sums of other weights stay beside the new weights."""
    torch.manual_seed(0)
    folder = save_checkpoint(tmp_path / "g", GPT(SMALL_GPT), "gpt", {"step": 1})
    write_sums(folder)
    assert {"train_state.pt", "SHA256SUMS"} <= set(_files(folder))
    second = GPT(SMALL_GPT)
    save_checkpoint(folder, second, "gpt")
    assert set(_files(folder)) == {"model.safetensors", "config.json"}
    model, state, _ = load_checkpoint(folder, train_state=True)
    assert state is None and all(torch.equal(model.state_dict()[k], v) for k, v in second.state_dict().items())


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_ctrl_c_while_a_save_renames_its_files_waits_until_every_file_is_in_place(tmp_path, monkeypatch, signame):
    """Ctrl-C (or SIGTERM, which bench turns into the same interrupt) just after the first rename takes effect once
    every file is in place, and still stops the program."""
    import os
    import signal

    import reference.checkpoint as ck

    class Stopped(KeyboardInterrupt):
        pass

    def stop(number, frame):
        raise Stopped

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "g", GPT(SMALL_GPT), "gpt", {"step": 1})
    renamed, real_replace = [], os.replace
    sig = getattr(signal, signame)

    def replace_then_signal(src, dst):
        real_replace(src, dst)
        renamed.append(Path(dst).name)
        if len(renamed) == 1:
            os.kill(os.getpid(), sig)

    monkeypatch.setattr(ck.os, "replace", replace_then_signal)
    second = GPT(SMALL_GPT)
    before = signal.signal(sig, stop)
    try:
        with pytest.raises(Stopped):  # still delivered, to the handler in force, once the save is whole
            save_checkpoint(tmp_path / "g", second, "gpt", {"step": 2})
        assert signal.getsignal(sig) is stop
    finally:
        signal.signal(sig, before)
    monkeypatch.undo()
    assert sorted(renamed) == ["config.json", "model.safetensors", "train_state.pt"]
    model, state, _ = load_checkpoint(tmp_path / "g", train_state=True)
    assert state["step"] == 2 and all(torch.equal(model.state_dict()[k], v) for k, v in second.state_dict().items())
