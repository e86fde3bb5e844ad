"""bench/components/weights_dir.py: a module's state dict + a JSON document round-trip, found by directory or file."""
from __future__ import annotations

import json

import pytest
import torch

from bench.api import UserError
from bench.components.weights_dir import read_weights_dir, save_weights_dir


def test_round_trip_by_directory_and_by_weights_file(tmp_path):
    module = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    doc = {"config": {"width": 2, "names": ["a", "b"]}, "report": {"val_n": 3}}
    save_weights_dir(module, str(tmp_path / "m"), "m.safetensors", "m.json", doc, indent=1)
    assert (tmp_path / "m" / "m.json").read_text() == json.dumps(doc, indent=1)
    for path in (tmp_path / "m", tmp_path / "m" / "m.safetensors"):
        state, again = read_weights_dir(str(path), "m.safetensors", "m.json", "thing")
        assert again == doc
        assert state.keys() == module.state_dict().keys()
        for k, v in module.state_dict().items():
            assert torch.equal(state[k], v)


def test_missing_file_is_one_clear_line(tmp_path):
    save_weights_dir(torch.nn.Linear(2, 2), str(tmp_path / "m"), "m.safetensors", "m.json", {})
    (tmp_path / "m" / "m.json").unlink()
    with pytest.raises(UserError, match=r"^thing: expected m\.safetensors and m\.json at .*m$"):
        read_weights_dir(str(tmp_path / "m"), "m.safetensors", "m.json", "thing")


def test_a_damaged_file_is_one_clear_line(tmp_path):
    save_weights_dir(torch.nn.Linear(2, 2), str(tmp_path / "m"), "m.safetensors", "m.json", {})
    (tmp_path / "m" / "m.json").write_text("{bad")
    with pytest.raises(UserError, match=r"^thing: .*m\.json is not valid JSON"):
        read_weights_dir(str(tmp_path / "m"), "m.safetensors", "m.json", "thing")
    (tmp_path / "m" / "m.json").write_text("{}")
    (tmp_path / "m" / "m.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(UserError, match=r"^thing: .*m\.safetensors is not a readable safetensors file"):
        read_weights_dir(str(tmp_path / "m"), "m.safetensors", "m.json", "thing")
