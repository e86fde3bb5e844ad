"""Loaders for the public checkpoints (reference/loaders.py, reference/safe_unpickle.py).

No real weights exist here: the formats (tests/data/formats/*.json: every key and shape) and the function are under
test. Full-size key coverage builds state dicts with exactly each JSON's keys and shapes, filled with one constant
per tensor, so a tensor routed to the wrong place is caught too. Reduced-width tests check the function against an
independent plain-torch forward (nn.TransformerEncoderLayer blocks) and the HFAiLab <-> taming equivalence through
the JSON's own key map.
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from reference.configs import PAPER
from reference.loaders import (build_foreign, detect_kind, infer_hfailab_gpt_config, load_pretrained,
                               taming_key_map)
from reference.loaders import convert as convert_checkpoint
from reference.safe_unpickle import CheckpointReadError, Stub, safe_torch_load

HERE = Path(__file__).parent
FORMATS = HERE / "data" / "formats"  # the public checkpoints as facts: every key and shape, the config


@pytest.fixture(scope="module")
def bigtmp(tmp_path_factory):
    """A folder for the paper-size files: in memory (/dev/shm) where there is one, so writing 1.35 GB is quick."""
    import shutil
    import tempfile

    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 6 * 2 ** 30:
        folder = Path(tempfile.mkdtemp(prefix="clipgen-loaders-", dir=shm))
    else:
        folder = tmp_path_factory.mktemp("big")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def fmt(name: str) -> dict:
    return json.loads((FORMATS / name).read_text())


def const_state(shapes: dict[str, list[int]], dtypes: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """One tensor per key, tensor i filled with a value that identifies it (cheap: no random numbers)."""
    out = {}
    for i, (k, shape) in enumerate(shapes.items()):
        dt = (dtypes or {}).get(k, "float32")
        if dt == "bool":
            n = shape[0]
            out[k] = torch.ones(n, n, dtype=torch.bool).triu(1)  # the causal mask, True = masked
        elif dt == "int64":
            out[k] = torch.tensor(7, dtype=torch.int64)
        else:
            out[k] = torch.empty(shape).fill_(_tag(i))
    return out


def _tag(i: int) -> float:
    return 1.0 + i / 1024.0  # exact in float32 for the sizes used here


# ---------------------------------------------------------------------------------------------------------------
# the JSON's taming key map, parsed independently of the loader
# ---------------------------------------------------------------------------------------------------------------

def parse_map_expr(expr: str) -> tuple[list[str], bool]:
    """'concat_dim0(a[:, :, 0, 0], b[:, :, 0, 0])' -> (['a', 'b'], True); 'x' -> (['x'], False)."""
    m = re.fullmatch(r"concat_dim0\((.*)\)", expr)
    parts = _split_args(m.group(1)) if m else [expr]
    squeeze = all(p.endswith("[:, :, 0, 0]") for p in parts)
    return [p.removesuffix("[:, :, 0, 0]") for p in parts], squeeze


def _split_args(s: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in s:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return out + [cur.strip()]


def hfailab_to_taming(sd: dict[str, torch.Tensor], key_map: dict[str, str]) -> dict[str, torch.Tensor]:
    """Invert the JSON's key_map_to_taming: split fused q;k;v, unsqueeze 1x1 kernels."""
    out = {}
    for ours, expr in key_map.items():
        keys, squeeze = parse_map_expr(expr)
        pieces = sd[ours].chunk(len(keys), 0) if len(keys) > 1 else [sd[ours]]
        for k, t in zip(keys, pieces):
            out[k] = (t[:, :, None, None] if squeeze else t).clone()
    return out


def test_taming_key_map_equals_the_documented_map_at_paper_size():
    documented = fmt("hfailab-clipgen-vqgan.json")["key_map_to_taming"]
    ours = {k: v.render() for k, v in taming_key_map(PAPER.vqgan).items()}
    assert ours == documented
    taming_keys = set(fmt("taming-vqgan-f16-16384.json")["state_dict"])
    assert {k for s in taming_key_map(PAPER.vqgan).values() for k in s.keys} == taming_keys


# ---------------------------------------------------------------------------------------------------------------
# full-size key coverage
# ---------------------------------------------------------------------------------------------------------------

def _check_consts(model: nn.Module, source: dict[str, torch.Tensor], key_map: dict[str, str] | None = None):
    """Every weight of the model holds exactly the source tensor(s) it should (by the per-tensor constant)."""
    sd = model.state_dict()
    for k, v in sd.items():
        if k.startswith("discriminator.") or k.endswith(".mask"):
            continue
        if key_map is None:
            expected = source[k]
        else:
            keys, squeeze = parse_map_expr(key_map[k])
            parts = [source[x][:, :, 0, 0] if squeeze else source[x] for x in keys]
            expected = torch.cat(parts) if len(parts) > 1 else parts[0]
        assert v.shape == expected.shape, k
        assert torch.equal(v, expected), k


@pytest.mark.slow
def test_full_size_hfailab_vqgan_every_key(bigtmp):
    tmp_path = bigtmp
    doc = fmt("hfailab-clipgen-vqgan.json")
    sd = const_state(doc["state_dict"], doc["non_float32_entries"])
    path = tmp_path / "vqgan_coco.pt"
    torch.save({"model": sd, "epoch": 42, "step": 1000, "loss_recon": 0.1,
                "opt_g": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]}}, path)
    model, report = build_foreign("hfailab-vqgan", path)
    disc = {k for k in doc["state_dict"] if k.startswith("discriminator.")}
    assert set(report.dropped) == disc and len(disc) > 0
    assert set(report.consumed) | set(report.dropped) == set(doc["state_dict"])
    assert set(report.consumed) & set(report.dropped) == set()
    assert set(report.container) == {"model", "epoch", "step", "loss_recon", "opt_g"}
    cfg = model.cfg
    assert (cfg.resolution, cfg.ch, cfg.ch_mult, cfg.num_res_blocks, cfg.attn_resolutions, cfg.z_channels,
            cfg.embed_dim, cfg.codebook_size, cfg.norm_eps) == (256, 128, (1, 1, 2, 2, 4), 2, (16,), 256, 256, 16384,
                                                                1e-5)
    _check_consts(model, sd)
    assert sum(p.numel() for n, p in model.named_parameters() if not n.startswith("discriminator.")) \
        == doc["param_counts"]["total"] - doc["param_counts"]["discriminator"]
    # keep_discriminator: the training-only part loads too
    model2, report2 = build_foreign("hfailab-vqgan", path, keep_discriminator=True)
    assert report2.dropped == {}
    assert torch.equal(model2.discriminator.head.weight, sd["discriminator.head.weight"])


@pytest.fixture
def fake_lightning(tmp_path):
    """A module ``pytorch_lightning_fake.callbacks`` importable only while the fixture builds the checkpoint."""
    pkg = tmp_path / "fakepl" / "pytorch_lightning_fake"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    marker = tmp_path / "EXECUTED"
    (pkg / "callbacks.py").write_text(
        "class ModelCheckpoint:\n"
        "    def __init__(self, monitor):\n        self.monitor = monitor\n"
        "def touch(path):\n    open(path, 'w').write('ran')\n    return 0\n"
        "class Payload:\n"
        f"    def __reduce__(self):\n        return (touch, ({str(marker)!r},))\n")
    sys.path.insert(0, str(pkg.parent))
    import importlib
    mod = importlib.import_module("pytorch_lightning_fake.callbacks")

    def extras():
        return {"epoch": 3, "global_step": 123, "pytorch-lightning_version": "1.0.8",
                "callbacks": {mod.ModelCheckpoint: {"best_model_score": torch.tensor(0.5), "best_model_path": "x"}},
                "hyper_parameters": mod.ModelCheckpoint("val/rec_loss"), "payload": mod.Payload(),
                "optimizer_states": [{"state": {}, "param_groups": [{"lr": 4.5e-6, "params": [0]}]}],
                "lr_schedulers": []}

    def forget():
        sys.path.remove(str(pkg.parent))
        for name in [n for n in sys.modules if n.startswith("pytorch_lightning_fake")]:
            del sys.modules[name]

    yield extras, forget, marker
    if str(pkg.parent) in sys.path:
        forget()


@pytest.mark.slow
def test_full_size_taming_lightning_every_key(bigtmp, fake_lightning):
    tmp_path = bigtmp
    extras, forget, marker = fake_lightning
    doc = fmt("taming-vqgan-f16-16384.json")
    shapes = {**doc["state_dict"], **doc["expected_loss_keys"]}
    dtypes = {k: "int64" for k in doc["expected_loss_keys"] if k.endswith("num_batches_tracked")}
    sd = const_state(shapes, dtypes)
    path = tmp_path / "last.ckpt"
    torch.save({**extras(), "state_dict": sd}, path)
    forget()
    with pytest.raises(ModuleNotFoundError):
        __import__("pytorch_lightning_fake")
    # torch's weights-only reader refuses the file; the restricted reader admits it, stubbing the classes
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)
    obj = safe_torch_load(path)
    (cls, value), = obj["callbacks"].items()
    assert issubclass(cls, Stub) and cls.__stub_module__ == "pytorch_lightning_fake.callbacks"
    assert torch.equal(value["best_model_score"], torch.tensor(0.5))
    assert isinstance(obj["payload"], Stub) and not marker.exists()  # nothing from the file was called

    model, report = build_foreign("taming-vqgan", path)
    assert not marker.exists()
    assert set(report.dropped) == set(doc["expected_loss_keys"])
    assert set(report.consumed) == set(doc["state_dict"])
    assert model.cfg.norm_eps == 1e-6 and model.cfg.codebook_weight == 0.25
    _check_consts(model, sd, fmt("hfailab-clipgen-vqgan.json")["key_map_to_taming"])
    assert detect_kind(path) == "taming-vqgan"

    # the same first stage inside a taming transformer checkpoint: keys under first_stage_model.
    small = {"first_stage_model." + k: v for k, v in sd.items()}
    small["transformer.tok_emb.weight"] = torch.zeros(4, 2)
    path2 = tmp_path / "transformer.ckpt"
    torch.save({"state_dict": small, "epoch": 1}, path2)
    model2, report2 = build_foreign("taming-vqgan", path2)
    assert "transformer.tok_emb.weight" in report2.dropped
    assert len(report2.consumed) == len(doc["state_dict"])
    assert torch.equal(model2.decoder.conv_in.weight, model.decoder.conv_in.weight)


@pytest.fixture(scope="module")
def full_gpt_file(bigtmp):
    """The paper-size HFAiLab GPT file (1.35 GB of float32), written once per session."""
    doc = fmt("hfailab-clipgen-gpt.json")
    sd = const_state(doc["state_dict"], doc["non_float32_entries"])
    path = bigtmp / "gpt_coco.pt"
    torch.save({"model": sd, "epoch": 99, "step": 5, "val_loss": 4.2}, path)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    probe = {k: sd[k].flatten()[0].item() for k in sd}
    del sd
    yield path, doc, shapes, probe
    path.unlink()


@pytest.mark.slow
def test_full_size_hfailab_gpt_every_key(full_gpt_file):
    path, doc, shapes, probe = full_gpt_file
    model, report = build_foreign("hfailab-gpt", path)
    masks = {k for k in doc["state_dict"] if k.endswith(".mask")}
    assert len(masks) == 24 and set(report.dropped) == masks
    assert set(report.consumed) == set(doc["state_dict"]) - masks
    cfg = model.cfg
    assert (cfg.vocab_size, cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_pos, cfg.cond_dim, cfg.ffn_dim, cfg.grid,
            cfg.ln_eps) == (16384, 24, 1024, 16, 256, 512, 4096, 16, 1e-5)
    assert model.num_params() == doc["param_count"]
    for k, v in model.state_dict().items():
        assert tuple(v.shape) == shapes[k], k
        assert v.flatten()[0].item() == probe[k] and v.flatten()[-1].item() == probe[k], k
    assert not model.training


# ---------------------------------------------------------------------------------------------------------------
# reduced width: the function
# ---------------------------------------------------------------------------------------------------------------

class RefBlock(nn.Module):
    def __init__(self, d, h, ffn, n_pos):
        super().__init__()
        self.encoder = nn.TransformerEncoderLayer(d, h, ffn, dropout=0.0, activation="gelu", batch_first=True,
                                                  norm_first=True)
        self.register_buffer("mask", ~torch.ones(n_pos, n_pos, dtype=torch.bool).tril())


class RefGPT(nn.Module):
    """The documented HFAiLab layout in plain torch: prefix at 0, pre-LN encoder layers, untied head with bias."""

    def __init__(self, vocab=40, d=128, h=2, layers=2, n_pos=16, cond=24, ffn=192):
        super().__init__()
        self.pos_emb = nn.Parameter(torch.randn(1, n_pos, d) * 0.1)
        self.tok_emb = nn.Embedding(vocab, d)
        self.cond_proj = nn.Linear(cond, d)
        self.blocks = nn.ModuleList([RefBlock(d, h, ffn, n_pos) for _ in range(layers)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        with torch.no_grad():  # move norms / biases off their init so a swapped tensor shows
            for name, p in self.named_parameters():
                if "norm" in name or name.endswith("bias"):
                    p.add_(torch.randn_like(p) * 0.1)

    def forward(self, cond, tokens):
        x = torch.cat([self.cond_proj(F.normalize(cond, dim=-1))[:, None], self.tok_emb(tokens)], 1)
        t = x.shape[1]
        x = x + self.pos_emb[:, :t]
        for blk in self.blocks:
            x = blk.encoder(x, src_mask=blk.mask[:t, :t])
        return self.head(self.norm(x))


def _save_ref_gpt(path, **kw):
    torch.manual_seed(0)
    ref = RefGPT(**kw).eval()
    torch.save({"model": ref.state_dict(), "epoch": 7, "optimizer": {"state": {}, "param_groups": []},
                "scaler": {"scale": 65536.0}, "step": 3, "val_loss": 5.0}, path)
    return ref


@pytest.mark.parametrize("kw, overrides", [
    (dict(d=128, h=2), {}),  # heads inferred: n_embd // 64
    (dict(d=96, h=4, layers=3, n_pos=25, ffn=160), {"n_head": 4}),  # 5x5 grid, heads given
])
def test_reduced_gpt_matches_plain_torch_encoder_layers(tmp_path, kw, overrides):
    path = tmp_path / "gpt.pt"
    ref = _save_ref_gpt(path, **kw)
    gpt = load_pretrained("hfailab-gpt", path, **overrides)
    assert gpt.cfg.n_head == kw["h"]
    g = torch.Generator().manual_seed(1)
    n_pos = kw.get("n_pos", 16)
    cond = torch.randn(3, 24, generator=g)
    tokens = torch.randint(0, 40, (3, n_pos - 1), generator=g)
    with torch.no_grad():
        want = ref(cond, tokens)
        got = gpt(cond, tokens)
    assert got.shape == (3, n_pos, 40)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_reduced_gpt_cached_sampling_equals_uncached(tmp_path):
    from reference.sample import sample_tokens

    path = tmp_path / "gpt.pt"
    _save_ref_gpt(path, d=128, h=2)
    gpt = load_pretrained("auto", path)
    cond = torch.randn(4, 24, generator=torch.Generator().manual_seed(2))
    seeds = [11, 12, 13, 14]
    cached = sample_tokens(gpt, cond, seeds, top_k=10, top_p=0.95, use_cache=True)
    plain = sample_tokens(gpt, cond, seeds, top_k=10, top_p=0.95, use_cache=False)
    assert cached.shape == (4, 16)
    assert torch.equal(cached, plain)
    assert len(set(map(tuple, cached.tolist()))) > 1  # different seeds/conditions -> different samples


def _small_vqgan_state(seed=0):
    """Random weights in the HFAiLab layout with the paper's key structure (5 levels, 2 res blocks, attention at the
    last level) but small widths: the JSON key map applies unchanged."""
    from reference.configs import with_overrides
    from reference.vqgan import VQGAN

    cfg = with_overrides(PAPER.vqgan, ch=16, z_channels=24, embed_dim=12, codebook_size=64, norm_groups=4,
                         resolution=32, attn_resolutions=(2,))
    torch.manual_seed(seed)
    model = VQGAN(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.05 if p.dim() > 1 else 0.2))
        model.quantizer.embedding.weight.normal_()
    return cfg, dict(model.state_dict())


def test_reduced_vqgan_hfailab_and_taming_layouts_compute_the_same(tmp_path, fake_lightning):
    extras, forget, _ = fake_lightning
    cfg, sd = _small_vqgan_state()
    key_map = fmt("hfailab-clipgen-vqgan.json")["key_map_to_taming"]
    assert set(key_map) == {k for k in sd if not k.startswith("discriminator.")}  # same key structure as paper
    p1, p2 = tmp_path / "vqgan_coco.pt", tmp_path / "last.ckpt"
    torch.save({"model": sd, "epoch": 1}, p1)
    taming = hfailab_to_taming(sd, key_map)
    taming["loss.discriminator.main.0.weight"] = torch.randn(8, 3, 4, 4)
    torch.save({**extras(), "state_dict": taming}, p2)
    forget()

    over = dict(norm_groups=4, grid=2)
    a = load_pretrained("hfailab-vqgan", p1, **over)
    b = load_pretrained("taming-vqgan", p2, **over, norm_eps=1e-5)  # equal eps: the same function exactly
    assert a.cfg.resolution == 32 and a.cfg.attn_resolutions == (2,) and a.cfg.ch_mult == (1, 1, 2, 2, 4)
    sa, sb = a.state_dict(), b.state_dict()
    for k in key_map:
        assert torch.equal(sa[k], sb[k]), k
    imgs = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ia, ib = a.encode(imgs), b.encode(imgs)
    assert ia.shape == (3, 2, 2) and torch.equal(ia, ib)
    assert len(ia.unique()) > 1
    with torch.no_grad():
        xa, xb = a.decode_codes(ia), b.decode_codes(ib)
    torch.testing.assert_close(xa, xb, atol=1e-5, rtol=1e-5)
    # the taming default carries taming's own epsilon (1e-6): close to, but not the same function as, eps 1e-5
    c = load_pretrained("auto", p2, **over)
    assert c.cfg.norm_eps == 1e-6 and c.cfg.codebook_weight == 0.25
    # and the HFAiLab layout through our own independent check: loaded weights equal the saved ones
    for k in key_map:
        assert torch.equal(sa[k], sd[k]), k


# ---------------------------------------------------------------------------------------------------------------
# errors: one line naming the file and the first offending key
# ---------------------------------------------------------------------------------------------------------------

def _one_line_error(excinfo, path, *parts):
    msg = str(excinfo.value)
    assert "\n" not in msg
    assert str(path) in msg
    for p in parts:
        assert p in msg, msg


def test_truncated_file_is_one_line(tmp_path):
    path = tmp_path / "gpt.pt"
    _save_ref_gpt(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointReadError) as e:
        load_pretrained("hfailab-gpt", path)
    _one_line_error(e, path, "truncated or corrupt")
    assert isinstance(e.value, ValueError)


def test_wrong_keys_and_shapes_name_the_first_offender(tmp_path):
    path = tmp_path / "gpt.pt"
    _save_ref_gpt(path)
    good = torch.load(path, weights_only=True)

    bad = {**good, "model": {("blocks.1.encoder.lin.weight" if k == "blocks.1.encoder.linear2.weight" else k): v
                             for k, v in good["model"].items()}}
    torch.save(bad, path)
    with pytest.raises(ValueError) as e:
        load_pretrained("hfailab-gpt", path)
    _one_line_error(e, path, "missing key", "blocks.1.encoder.linear2.weight")

    bad = {**good, "model": {**good["model"], "blocks.1.encoder.linear1.weight": torch.zeros(100, 128)}}
    torch.save(bad, path)
    with pytest.raises(ValueError) as e:
        load_pretrained("hfailab-gpt", path)
    _one_line_error(e, path, "blocks.1.encoder.linear1.weight", "[100, 128]")

    bad = {**good, "model": {**good["model"], "extra.weight": torch.zeros(2)}}
    torch.save(bad, path)
    with pytest.raises(ValueError) as e:
        load_pretrained("hfailab-gpt", path)
    _one_line_error(e, path, "unexpected key", "extra.weight")

    bad = {**good, "model": {**good["model"], "blocks.0.mask": torch.zeros(16, 16, dtype=torch.bool)}}
    torch.save(bad, path)
    with pytest.raises(ValueError) as e:
        load_pretrained("hfailab-gpt", path)
    _one_line_error(e, path, "blocks.0.mask", "causal")

    torch.save(good, path)
    with pytest.raises(ValueError) as e:  # a GPT file read as a VQGAN
        load_pretrained("hfailab-vqgan", path)
    _one_line_error(e, path, "encoder.conv_in.weight")

    torch.save({"weights": good["model"]}, path)
    with pytest.raises(ValueError) as e:
        load_pretrained("hfailab-gpt", path)
    _one_line_error(e, path, "'model'")


def test_missing_file_and_unknown_kind(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_pretrained("hfailab-gpt", tmp_path / "nope.pt")
    path = tmp_path / "gpt.pt"
    _save_ref_gpt(path)
    with pytest.raises(ValueError, match="unknown checkpoint kind"):
        load_pretrained("dalle", path)
    with pytest.raises(ValueError, match="unknown GPTConfig override"):
        load_pretrained("hfailab-gpt", path, n_heads=2)


def test_infer_gpt_config_paper_shapes():
    doc = fmt("hfailab-clipgen-gpt.json")
    metas = {k: torch.empty(v, device="meta") for k, v in doc["state_dict"].items()}
    cfg = infer_hfailab_gpt_config(metas)
    assert cfg == PAPER.gpt  # the paper preset is exactly the release's architecture


def test_clip_entry_point_by_name_and_path(tmp_path):
    import open_clip

    from reference.clip import ClipModel

    # ViT-S-32-alt: the smallest stock open_clip ViT, so the test stays quick; ViT-B-32 / ViT-L-14 go the same way
    model = open_clip.model.CLIP(**open_clip.get_model_config("ViT-S-32-alt"))
    path = tmp_path / "vitb32.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(ValueError, match="model name"):
        load_pretrained("clip", path)
    with pytest.raises(ValueError, match="ViT-B-32@"):
        load_pretrained("auto", path)
    clip = load_pretrained("clip", f"ViT-S-32-alt@{path}")
    assert isinstance(clip, ClipModel) and clip.embed_dim == 256 and clip.image_size == 224
    want = model.visual.conv1.weight
    assert torch.equal(clip.model.visual.conv1.weight, want)
    emb = clip.encode_text(["a red square"])
    assert emb.shape == (1, 256) and torch.allclose(emb.norm(dim=-1), torch.ones(1), atol=1e-5)
    assert os.path.exists(path)


def test_hostile_pickle_reads_quietly_and_the_error_gives_no_unsafe_advice(tmp_path, recwarn):
    import pickle
    import warnings

    marker = tmp_path / "RAN"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "junk.pt"
    path.write_bytes(pickle.dumps({"model": Payload()}, protocol=4))
    warnings.simplefilter("always")
    with pytest.raises(CheckpointReadError) as e:
        safe_torch_load(path)
    _one_line_error(e, path, "not a torch checkpoint we can read safely", "weights-only reader refused")
    assert "weights_only" not in str(e.value) and "add_safe_globals" not in str(e.value)
    assert [str(w.message) for w in recwarn] == [] and not marker.exists()
    with pytest.raises(CheckpointReadError):  # the same through the loader and kind detection
        load_pretrained("auto", path)
    assert [str(w.message) for w in recwarn] == []


def test_unknown_file_names_the_kinds_the_caller_accepts(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"foo": torch.zeros(2)}, path)
    all_five = r"give it: one of hfailab-vqgan, hfailab-gpt, taming-vqgan, checkpoint, clip$"
    with pytest.raises(ValueError, match=all_five):
        load_pretrained("auto", path)  # load_pretrained takes all five
    with pytest.raises(ValueError, match=r"give it: one of hfailab-vqgan, hfailab-gpt, taming-vqgan$"):
        convert_checkpoint("auto", path, tmp_path / "out")  # convert only these
    assert not (tmp_path / "out").exists()


def test_overrides_are_checked_against_the_config_field_types(tmp_path):
    from reference.loaders import OverrideError

    path = tmp_path / "gpt.pt"
    _save_ref_gpt(path)  # n_embd 128
    for value in (-1, 0, True, "2", [1], 2.0):
        with pytest.raises(OverrideError, match=r"n_head must be an integer >= 1$") as e:
            load_pretrained("hfailab-gpt", path, n_head=value)
        _one_line_error(e, path, f"n_head={value!r}")
        assert isinstance(e.value, ValueError) and (e.value.name, e.value.value) == ("n_head", value)
    with pytest.raises(OverrideError, match=r"ln_eps must be a number >= 0$"):
        load_pretrained("hfailab-gpt", path, ln_eps=float("nan"))
    with pytest.raises(ValueError, match="not divisible by n_head=3") as e:  # the config's own check, naming the file
        load_pretrained("hfailab-gpt", path, n_head=3)
    _one_line_error(e, path)
    gpt = load_pretrained("hfailab-gpt", path, n_head=4, dropout=0, warmup=0, betas=[0.8, 0.9])
    assert (gpt.cfg.n_head, gpt.cfg.betas) == (4, (0.8, 0.9))  # an int for a float field; a list for a tuple

    _, sd = _small_vqgan_state()
    vq = tmp_path / "vqgan_coco.pt"
    torch.save({"model": sd}, vq)
    for name, value, wants in (("grid", 0, "an integer >= 1"), ("grid", "2", "an integer >= 1"),
                               ("norm_groups", True, "an integer >= 1"), ("l2_codes", 1, "true or false"),
                               ("attn_resolutions", [2, -2], "a list of integers >= 1"),
                               ("perceptual_path", 3, "a string or null"),
                               ("restart_dead_every", -1, "an integer >= 0")):
        with pytest.raises(OverrideError, match=f"{name} must be {re.escape(wants)}"):
            load_pretrained("hfailab-vqgan", vq, **{"norm_groups": 4, "grid": 2, name: value})
    model = load_pretrained("hfailab-vqgan", vq, norm_groups=4, grid=2, attn_resolutions=[2], restart_dead_every=0)
    assert model.cfg.attn_resolutions == (2,)
