"""Each feature extractor's identity() names everything that changes the features: reference statistics are
cached under it (bench/metrics/stats.py), so a field missing here silently reuses another network's numbers.
None of these tests load a real network: the classes are built with object.__new__ and the attributes
identity() reads."""
import hashlib
import os

from bench.features import ClipImageFeatures, EffNetLite0, InceptionV3Compat
from metrics_testing import PixelClip


# ---- clip: the probe fingerprints the evaluator's weights ----------------------------------
def test_clip_identity_names_the_weights_not_just_the_component_name():
    """An evaluator retrained under the same component name embeds differently: its statistics are not reusable."""
    a = ClipImageFeatures(PixelClip(seed=0), "evaluator-clip")
    twin = ClipImageFeatures(PixelClip(seed=0), "evaluator-clip")
    retrained = ClipImageFeatures(PixelClip(seed=1), "evaluator-clip")
    assert a.identity() == twin.identity()
    assert a.identity() != retrained.identity()
    assert a.identity()["component"] == retrained.identity()["component"] == "evaluator-clip"


def test_clip_identity_probe_is_computed_once_and_stable():
    calls = []

    class Counting(PixelClip):
        def encode_image(self, images):
            calls.append(images.shape)
            return super().encode_image(images)

    f = ClipImageFeatures(Counting(seed=3), "c")
    first = f.identity()
    assert f.identity() == first and len(calls) == 1  # cached on the instance
    assert first == ClipImageFeatures(PixelClip(seed=3), "c").identity()


# ---- effnet-lite0: weights and the rewritten graph ----------------------------------------
def _effnet(weights):
    e = object.__new__(EffNetLite0)
    e.weights = weights
    return e


def test_effnet_identity_names_the_graph_rewrites(tmp_path):
    w = tmp_path / "effnet.pth"
    w.write_bytes(b"effnet weights stand-in")
    e = _effnet(w)
    ident = e.identity()
    assert ident["graph"] == EffNetLite0.graph
    e.graph = "plain"  # the unfolded, contiguous twin: features move by ~3e-6
    assert e.identity() != ident and e.identity()["graph"] == "plain"


def test_effnet_identity_names_the_weights_bytes(tmp_path):
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    a.write_bytes(b"weights one")
    b.write_bytes(b"weights two")
    assert _effnet(a).identity() != _effnet(b).identity()
    assert _effnet(a).identity() == _effnet(a).identity()


# ---- inception-v3-compat: the weights' content ---------------------------------------------
def _inception(weights):
    n = object.__new__(InceptionV3Compat)
    n.weights = weights
    return n


def test_inception_identity_names_the_weights_content(tmp_path):
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    a.write_bytes(b"inception weights A")
    b.write_bytes(b"inception weights B")  # same size, other bytes
    ident_a = _inception(a).identity()
    assert ident_a == _inception(a).identity()
    assert ident_a != _inception(b).identity()

    # rewritten in place (same path, same size): the content hash must follow, not a stale cached one
    st = a.stat()
    a.write_bytes(b"inception weights C")
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    ident_c = _inception(a).identity()
    assert ident_c != ident_a and ident_c != _inception(b).identity()
    assert ident_c["weights_sha256"] == hashlib.sha256(b"inception weights C").hexdigest()
