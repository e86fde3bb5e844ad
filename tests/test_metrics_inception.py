"""Our `fid` pipeline against torch-fidelity, with the same (randomly initialised) Inception weights file (rows
named fd-inception: only torch-fidelity's own weights make `fid` rows).

The weights are random, so the numbers mean nothing: the computation is under test. Convolutions get
He-normal weights so the features do not vanish (PyTorch's default init shrinks them to ~1e-8).
"""
from __future__ import annotations

import hashlib
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from torch_fidelity import calculate_metrics
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from bench.api import SampleBatch
from bench.features import InceptionV3Compat
from bench.metrics.fd import FDArgs, build_fd
from bench.metrics.stats import feature_stats
from bench.registry import METRICS
from metrics_testing import TensorDataset, make_ctx


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    torch.manual_seed(0)
    with mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, strict=True: None), \
            mock.patch("torch_fidelity.feature_extractor_inceptionv3.torch.load", lambda *a, **k: {}):
        net = FeatureExtractorInceptionV3("random", ["2048"], feature_extractor_weights_path="unused")
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight)
    path = tmp_path_factory.mktemp("inception") / "weights-inception-random.pth"
    torch.save(net.state_dict(), path)
    return str(path)


def two_sets():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (8, 3, 32, 32), generator=g, dtype=torch.uint8)
    b = torch.full((8, 3, 32, 32), 30, dtype=torch.uint8)
    for i in range(8):
        b[i, i % 3, 4 + i:20 + i, 6:22] = 220
    return a, b


@pytest.mark.slow
def test_features_and_stats_equal_torch_fidelity(weights):
    a, _ = two_sets()
    ours = InceptionV3Compat(weights)(a)
    theirs_net = FeatureExtractorInceptionV3("theirs", ["2048"], feature_extractor_weights_path=weights)
    (theirs,) = theirs_net(a)
    assert ours.shape == (8, 2048) and float(ours.std()) > 1e-3  # not a degenerate network
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    st = feature_stats(ours)
    t64 = theirs.double().numpy()
    np.testing.assert_allclose(st.mu, t64.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(st.sigma, np.cov(t64, rowvar=False), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_fid_equals_torch_fidelity_calculate_metrics(weights, tmp_path):
    a, b = two_sets()
    for name, imgs in (("gen", a), ("ref", b)):
        (tmp_path / name).mkdir()
        for i, img in enumerate(imgs):
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(tmp_path / name / f"{i:03d}.png")
    theirs = calculate_metrics(input1=str(tmp_path / "gen"), input2=str(tmp_path / "ref"), fid=True, cuda=False,
                               feature_extractor_weights_path=weights, verbose=False, cache=False,
                               save_cpu_ram=True)["frechet_inception_distance"]
    ctx = make_ctx(TensorDataset(b), tmp_path / "cache")
    metric = build_fd(FDArgs(features="inception-v3-compat", blur=[0], feature_extractor_weights_path=weights,
                             batch_size=4))
    metric.update(SampleBatch(a, ["x"] * 8, list(range(8)), [{}] * 8))
    (row,) = metric.compute(ctx)
    # random weights are not torch-fidelity's: the same distance, named fd-inception, and the row says why
    assert row.metric == "fd-inception" and row.variant == "blur=0" and row.n == 8
    assert theirs > 1.0
    assert row.value == pytest.approx(theirs, rel=1e-4)
    assert row.extra["extractor"]["weights_sha256"] == hashlib.sha256(open(weights, "rb").read()).hexdigest()


@pytest.mark.slow
def test_only_torch_fidelitys_inception_weights_make_fid_rows(weights, tmp_path, monkeypatch):
    import bench.features

    a, b = two_sets()
    sha = hashlib.sha256(open(weights, "rb").read()).hexdigest()
    rows = {}
    for prefix in ("0" * 8 if not sha.startswith("0" * 8) else "f" * 8, sha[:8]):  # another file's, then this one's
        monkeypatch.setattr(bench.features, "INCEPTION_SHA256_PREFIX", prefix)
        for name in ("fd", "kid"):
            args = {"features": "inception-v3-compat", "blur": [0], "feature_extractor_weights_path": weights,
                    "batch_size": 4}
            metric = METRICS.get(name).factory(METRICS.get(name).args(**args))
            metric.update(SampleBatch(a, ["x"] * 8, list(range(8)), [{}] * 8))
            (row,) = metric.compute(make_ctx(TensorDataset(b), tmp_path / "cache"))
            rows[(prefix == sha[:8], name)] = row
    assert rows[(False, "fd")].metric == "fd-inception" and rows[(False, "kid")].metric == "kid-inception"
    assert "not FID" in rows[(False, "fd")].extra["weights_note"] and "not KID" in rows[(False, "kid")].extra["weights_note"]
    assert rows[(True, "fd")].metric == "fid" and rows[(True, "kid")].metric == "kid"
    assert "weights_note" not in rows[(True, "fd")].extra
    assert rows[(True, "fd")].value == rows[(False, "fd")].value  # the name changes, never the number
