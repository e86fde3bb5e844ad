"""reference.clip.load_clip on OpenAI's TorchScript release archives (the format of OpenAI's ViT-B-32.pt).

The archives here are tiny open_clip CLIPs in OpenAI's key layout, scripted and saved with torch.jit.save,
with OpenAI's quirks: fp16 linear/conv/attention weights and the extra input_resolution / context_length /
vocab_size entries in the state dict. CPU only, a few seconds.
"""
from __future__ import annotations

import copy
import json
import warnings
import zipfile

import open_clip
import pytest
import torch
import torch.nn.functional as F

from reference.clip import is_torchscript_archive, load_clip
from reference.loaders import load_pretrained

TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
ARCHS = {
    # a ViT image tower, QuickGELU as in OpenAI's models, and its GELU twin (open_clip's plain names)
    "clipgen-test-oai-vit-quickgelu": {"embed_dim": 32, "quick_gelu": True, "text_cfg": TEXT, "vision_cfg": {
        "image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8}},
    "clipgen-test-oai-vit": {"embed_dim": 32, "text_cfg": TEXT, "vision_cfg": {
        "image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8}},
    # a ModifiedResNet image tower (the RN50 family)
    "clipgen-test-oai-rn-quickgelu": {"embed_dim": 32, "quick_gelu": True, "text_cfg": TEXT, "vision_cfg": {
        "image_size": 32, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None}},
}
CAPTIONS = ["a red square on the left", "a blue square on the right", "two green circles"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def archs(tmp_path_factory) -> list[str]:
    """The tiny architectures above, registered by name as a user's model JSONs would be."""
    d = tmp_path_factory.mktemp("configs")
    for name, cfg in ARCHS.items():
        (d / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(str(d))
    return list(ARCHS)


class OpenAILayout(torch.nn.Module):
    """A CLIP's parameters under OpenAI's names, plus the three ints OpenAI's state dicts carry."""

    def __init__(self, clip: torch.nn.Module):
        super().__init__()
        for name, child in clip.named_children():
            self.add_module(name, child)
        for name, param in clip.named_parameters(recurse=False):
            self.register_parameter(name, param)
        visual = clip.visual.image_size
        for key, value in (("input_resolution", visual[0] if isinstance(visual, tuple) else visual),
                           ("context_length", clip.context_length), ("vocab_size", clip.vocab_size)):
            self.register_buffer(key, torch.tensor(value))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)


def save_openai_archive(name: str, path, fp16: bool = True, seed: int = 0) -> torch.nn.Module:
    """Script a random `name` CLIP in OpenAI's layout and save it as OpenAI ships CLIP; returns the fp32 model."""
    torch.manual_seed(seed)
    model = open_clip.create_model(name).eval()
    if fp16:  # OpenAI's archives keep linear / conv / attention weights in fp16
        open_clip.model.convert_weights_to_fp16(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(OpenAILayout(model)).save(str(path))
    return copy.deepcopy(model).float().eval()


def images(n: int = 4) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 40, 48), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


def assert_same_embeddings(clip, reference: torch.nn.Module, name: str) -> None:
    x = images()
    tokens = open_clip.get_tokenizer(name)(CAPTIONS)
    with torch.no_grad():
        want_image = F.normalize(reference.encode_image(clip.preprocess(x.float() / 255)), dim=-1)
        want_text = F.normalize(reference.encode_text(tokens), dim=-1)
    torch.testing.assert_close(clip.encode_image(x), want_image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(clip.encode_text(CAPTIONS), want_text, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,fp16", [("clipgen-test-oai-vit-quickgelu", True),
                                       ("clipgen-test-oai-rn-quickgelu", False)])
def test_load_clip_reads_an_openai_torchscript_archive(archs, tmp_path, name, fp16):
    path = tmp_path / "openai.pt"
    reference = save_openai_archive(name, path, fp16=fp16)
    assert is_torchscript_archive(path)
    clip = load_clip(name, str(path))
    assert clip.name == name and clip.embed_dim == 32 and clip.image_size == 32
    assert clip.meta["format"] == "torchscript"
    assert next(clip.model.parameters()).dtype == torch.float32
    assert_same_embeddings(clip, reference, name)
    # the same preprocessing as the same weights given as a plain state dict
    torch.save(reference.state_dict(), tmp_path / "state_dict.pt")
    assert not is_torchscript_archive(tmp_path / "state_dict.pt")
    assert clip.preprocess_cfg == load_clip(name, str(tmp_path / "state_dict.pt")).preprocess_cfg


def test_clip_spec_name_at_path_reads_an_openai_torchscript_archive(archs, tmp_path):
    name = "clipgen-test-oai-vit-quickgelu"
    reference = save_openai_archive(name, tmp_path / "ViT-B-32.pt", seed=3)
    clip = load_pretrained("clip", f"{name}@{tmp_path / 'ViT-B-32.pt'}")
    assert_same_embeddings(clip, reference, name)


def test_a_corrupt_torchscript_archive_gives_one_clear_error(archs, tmp_path):
    path = tmp_path / "corrupt.pt"
    save_openai_archive("clipgen-test-oai-vit-quickgelu", path)
    with zipfile.ZipFile(path) as archive:  # the same zip with its TorchScript code garbled
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, b"def (:\n" if "/code/" in member and member.endswith(".py") else data)
    assert is_torchscript_archive(path)
    with pytest.raises(ValueError, match="torch.jit.load cannot read") as info:
        load_clip("clipgen-test-oai-vit-quickgelu", str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_an_unrelated_torchscript_archive_gives_one_clear_error(archs, tmp_path):
    path = tmp_path / "linear.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(torch.nn.Linear(4, 2)).save(str(path))
    with pytest.raises(ValueError, match="not a CLIP in OpenAI's layout") as info:
        load_clip("clipgen-test-oai-vit-quickgelu", str(path))
    message = str(info.value)
    assert str(path) in message and "weight" in message and "\n" not in message


def test_auto_detection_points_a_torchscript_archive_to_the_clip_spec(tmp_path):
    from reference.loaders import load_pretrained

    path = tmp_path / "ViT-B-32.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(torch.nn.Linear(4, 2)).save(str(path))
    with pytest.raises(ValueError, match=r"TorchScript archive .* ViT-B-32-quickgelu@"):
        load_pretrained("auto", path)


def test_a_model_name_that_does_not_fit_the_archive_is_refused(archs, tmp_path):
    """A ViT archive named as a ResNet: the message says what the file holds and which names fit it."""
    path = tmp_path / "vit.pt"
    save_openai_archive("clipgen-test-oai-vit-quickgelu", path)
    with pytest.raises(ValueError) as info:
        load_clip("clipgen-test-oai-rn-quickgelu", str(path))
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert "holds a CLIP with a ViT image tower (patch 8, width 64, layers 2, 32 px)" in message
    assert "'clipgen-test-oai-rn-quickgelu' has a ResNet image tower" in message
    assert "names that fit it: clipgen-test-oai-vit-quickgelu" in message
    # and a real open_clip name of another shape
    with pytest.raises(ValueError, match="but 'RN50-quickgelu' has a ResNet image tower"):
        load_clip("RN50-quickgelu", str(path))


def test_the_archives_activation_must_match_the_name(archs, tmp_path):
    """OpenAI's CLIPs use QuickGELU: loading one under a GELU name would silently change its embeddings."""
    path = tmp_path / "vit.pt"
    save_openai_archive("clipgen-test-oai-vit-quickgelu", path)
    with pytest.raises(ValueError, match="QuickGELU") as info:
        load_clip("clipgen-test-oai-vit", str(path))
    message = str(info.value)
    assert "names that fit it: clipgen-test-oai-vit-quickgelu" in message and str(path) in message
    # a GELU archive is refused under the QuickGELU name the same way
    save_openai_archive("clipgen-test-oai-vit", tmp_path / "gelu.pt")
    with pytest.raises(ValueError, match="names that fit it: clipgen-test-oai-vit$"):
        load_clip("clipgen-test-oai-vit-quickgelu", str(tmp_path / "gelu.pt"))
