"""Sampling: top-k / top-p semantics, inverse-CDF draws, per-row seeds independent of the batch, re-ranking."""
import pytest
import torch
import torch.nn.functional as F

from reference.configs import get_preset, with_overrides
from reference.gpt import GPT
from reference.sample import draw, filter_logits, generate, mix_seed, rerank_scores, sample_tokens
from reference.vqgan import VQGAN

TINY = get_preset("tiny")
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny per-step ops: one thread is far faster on a busy CPU
VQ16 = with_overrides(TINY.vqgan, resolution=16)  # 4x4 tokens: short sequences keep the tests fast


def small_gpt(seed=0):
    torch.manual_seed(seed)
    cfg = with_overrides(TINY.gpt, n_layer=2, n_embd=32, n_head=4, ffn_dim=64, cond_dim=16, grid=4, n_pos=16)
    return GPT(cfg).eval()


def test_top_k_keeps_ties_and_top_p_keeps_the_crossing_token():
    logits = torch.tensor([[3.0, 1.0, 2.0, 2.0, 0.0]])
    out = filter_logits(logits, top_k=2)
    assert torch.isfinite(out).tolist() == [[True, False, True, True, False]]  # the tie at the 2nd value is kept
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = filter_logits(p.log(), top_p=0.6)
    assert torch.isfinite(out).tolist() == [[True, True, False, False]]  # 0.5 < 0.6, 0.8 crosses: kept
    out = filter_logits(p.log(), top_p=0.01)
    assert torch.isfinite(out).tolist() == [[True, False, False, False]]  # top-1 always kept
    assert torch.allclose(filter_logits(logits, temperature=2.0), logits / 2)
    with pytest.raises(ValueError):
        filter_logits(logits, temperature=0.0)


def test_top_p_filters_unsorted_logits_by_value_not_by_position():
    """The nucleus mask is computed in sorted order and must be scattered back to the tokens' own positions."""
    g = torch.Generator().manual_seed(0)
    sorted_logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    perm = torch.tensor([2, 0, 3, 1])
    out = filter_logits(sorted_logits[:, perm], top_p=0.6)
    assert torch.isfinite(out).tolist() == [[False, True, False, True]]  # 0.5 and 0.3, wherever they sit
    assert torch.equal(out, filter_logits(sorted_logits, top_p=0.6)[:, perm])
    # random rows, each under its own permutation: filtering commutes with permuting
    logits = torch.randn(6, 50, generator=g) * 3
    perms = torch.stack([torch.randperm(50, generator=g) for _ in range(6)])
    for top_p in (0.3, 0.9):
        assert torch.equal(filter_logits(logits.gather(1, perms), top_p=top_p),
                           filter_logits(logits, top_p=top_p).gather(1, perms))


def test_top_p_applies_to_the_tempered_distribution():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    # untempered cumsum 0.5, 0.8: two tokens; at temperature 2 (probs ~ sqrt) 0.38, 0.67, 0.88: three
    assert torch.isfinite(filter_logits(logits, top_p=0.7)).tolist() == [[True, True, False, False]]
    out = filter_logits(logits, temperature=2.0, top_p=0.7)
    assert torch.isfinite(out).tolist() == [[True, True, True, False]]
    assert torch.equal(out, filter_logits(logits / 2.0, top_p=0.7))
    g = torch.Generator().manual_seed(1)
    many = torch.randn(8, 40, generator=g) * 2
    for t in (0.5, 2.0):
        assert torch.equal(filter_logits(many, temperature=t, top_p=0.6), filter_logits(many / t, top_p=0.6))


def test_top_p_boundary_a_cumsum_exactly_at_top_p_does_not_count_as_crossing():
    """Pins the documented convention: tokens are dropped where the cumsum *exceeds* top_p, shifted right by one.
    Here the cumsum reaches exactly 0.75 at the 2nd token, so the 3rd is the first to cross, and it is kept."""
    logits = torch.tensor([[0.5, 0.25, 0.25]]).log()
    assert logits.softmax(-1).cumsum(-1).tolist() == [[0.5, 0.75, 1.0]]  # exact in fp32: the test is sharp
    assert torch.isfinite(filter_logits(logits, top_p=0.75)).tolist() == [[True, True, True]]
    assert torch.isfinite(filter_logits(logits, top_p=0.7)).tolist() == [[True, True, False]]


def test_draw_matches_the_distribution_and_skips_filtered_tokens():
    logits = filter_logits(torch.tensor([[0.0, 1.0, -1.0, 2.0, 0.5]]).expand(20000, 5), top_k=3)
    u = torch.rand(20000, generator=torch.Generator().manual_seed(0))
    tok = draw(logits, u)
    freq = torch.bincount(tok, minlength=5).float() / 20000
    assert freq[0] == 0 and freq[2] == 0
    assert torch.allclose(freq, logits[0].softmax(-1), atol=0.015)
    edge = draw(logits[:2], torch.tensor([0.0, 1.0 - 1e-7]))
    assert edge.tolist() == [1, 4]  # first and last kept tokens


def test_rows_do_not_depend_on_batch_composition():
    gpt = small_gpt()
    cond = torch.randn(4, gpt.cfg.cond_dim)
    seeds = [5, 6, 7, 8]
    together = sample_tokens(gpt, cond, seeds, top_k=50)
    alone = sample_tokens(gpt, cond[2:3], [7], top_k=50)
    reordered = sample_tokens(gpt, cond[[3, 2]], [8, 7], top_k=50)
    assert torch.equal(together[2], alone[0])
    assert torch.equal(together[2], reordered[1]) and torch.equal(together[3], reordered[0])
    assert not torch.equal(together[0], sample_tokens(gpt, cond[:1], [99], top_k=50)[0])  # the seed matters


class FakeClip:
    """A stand-in with the ClipModel interface: 'similarity' is the image brightness (text is ignored)."""

    image_size = 12
    embed_dim = 2

    def __init__(self):
        self.unnormalised_inputs = []

    def encode_text(self, captions):
        return torch.tensor([[1.0, 0.0]]).expand(len(captions), 2)

    def encode_image(self, images):
        assert images.dtype == torch.uint8
        b = images.float().mean((1, 2, 3)) / 255.0  # [N] in [0,1]
        return F.normalize(torch.stack([b, 1 - b], 1), dim=1)

    def encode_image_unnormalised(self, x):
        self.unnormalised_inputs.append(x)
        b = (x.mean((1, 2, 3)) + 1) / 2
        return F.normalize(torch.stack([b, 1 - b], 1), dim=1)


def test_generate_rerank_picks_the_best_candidate_and_batch_size_does_not_matter():
    gpt = small_gpt(1)
    torch.manual_seed(0)
    vq = VQGAN(VQ16).eval()
    cond = torch.randn(2, gpt.cfg.cond_dim)
    imgs1, tok1 = generate(gpt, vq, cond, [3, 4], top_k=20, return_tokens=True)
    imgs2, tok2 = generate(gpt, vq, cond, [3, 4], top_k=20, batch_size=1, return_tokens=True)
    assert torch.equal(tok1, tok2) and torch.equal(imgs1, imgs2)
    assert imgs1.shape == (2, 3, 16, 16) and tok1.shape == (2, 4, 4)
    clip = FakeClip()
    best, best_tok = generate(gpt, vq, cond, [3, 4], top_k=20, candidates=4, rerank_clip=clip,
                              captions=["a", "b"], return_tokens=True)
    # recompute all candidates by hand: candidate c of seed s is a row seeded with mix_seed(s, "candidate", c)
    for i, s in enumerate([3, 4]):
        rows = sample_tokens(gpt, cond[i:i + 1].expand(4, -1), [mix_seed(s, "candidate", c) for c in range(4)],
                             top_k=20)
        cands = vq.decode_tokens(rows)
        j = int(cands.float().mean((1, 2, 3)).argmax())
        assert torch.equal(best_tok[i].flatten(), rows[j]) and torch.equal(best[i], cands[j])
    with pytest.raises(ValueError):
        generate(gpt, vq, cond, [3, 4], candidates=2)
    with pytest.raises(ValueError):
        generate(gpt, vq, cond, [3], top_k=20)


class CaptionClip(FakeClip):
    """A stand-in whose text matters: 'bright' embeds as (1,0), 'dark' as (0,1). An image embeds in the
    (brightness, 1 - brightness) direction scaled by 1 + 100 * its pixel std: unnormalised, so a raw dot product
    would rank mostly by contrast, cosine similarity by brightness."""

    TEXT = {"bright": [1.0, 0.0], "dark": [0.0, 1.0]}

    def encode_text(self, captions):
        return torch.tensor([self.TEXT[c] for c in captions])

    def encode_image(self, images):
        x = images.float() / 255.0
        b = x.mean((1, 2, 3))
        return F.normalize(torch.stack([b, 1 - b], 1), dim=1) * (1 + 100 * x.std((1, 2, 3)))[:, None]


def candidates_by_hand(gpt, vq, cond, seed, n, top_k):
    """Tokens [n,n_pos] and images of the n candidates generate() draws for one row (seeds as documented)."""
    rows = sample_tokens(gpt, cond[None].expand(n, -1), [mix_seed(seed, "candidate", c) for c in range(n)],
                         top_k=top_k)
    return rows, vq.decode_tokens(rows)


CAPTIONS = ["bright", "dark"]


def reranked(layers: int, seeds: list[int], candidates: int):
    """generate() with `candidates` per caption of CAPTIONS re-ranked by CaptionClip: (gpt, vq, cond, best images,
    best tokens)."""
    gpt = small_gpt(layers)
    torch.manual_seed(0)
    vq = VQGAN(VQ16).eval()
    cond = torch.randn(2, gpt.cfg.cond_dim)
    best, best_tok = generate(gpt, vq, cond, seeds, top_k=20, candidates=candidates, rerank_clip=CaptionClip(),
                              captions=CAPTIONS, return_tokens=True)
    return gpt, vq, cond, best, best_tok


def test_generate_scores_each_candidate_against_its_own_caption():
    clip, seeds = CaptionClip(), [11, 12]
    gpt, vq, cond, best, best_tok = reranked(2, seeds, 3)
    for i, (s, cap) in enumerate(zip(seeds, CAPTIONS)):
        rows, cands = candidates_by_hand(gpt, vq, cond[i], s, 3, top_k=20)
        cos = F.normalize(clip.encode_image(cands), dim=1) @ clip.encode_text([cap])[0]
        j = int(cos.argmax())
        assert torch.equal(best_tok[i].flatten(), rows[j]) and torch.equal(best[i], cands[j]), (cap, cos)


def test_rerank_follows_cosine_similarity_not_the_raw_dot_product():
    clip, seeds = CaptionClip(), [3, 4]
    gpt, vq, cond, _, best_tok = reranked(1, seeds, 4)
    differs = False
    for i, (s, cap) in enumerate(zip(seeds, CAPTIONS)):
        rows, cands = candidates_by_hand(gpt, vq, cond[i], s, 4, top_k=20)
        img, text = clip.encode_image(cands), clip.encode_text([cap])[0]
        cos = F.normalize(img, dim=1) @ text
        assert torch.allclose(rerank_scores(clip, [cap] * 4, cands), cos)
        assert torch.equal(best_tok[i].flatten(), rows[int(cos.argmax())]), cap
        differs |= int(cos.argmax()) != int((img @ text).argmax())
    assert differs  # the embeddings' norms do reorder the candidates: the test can tell the two apart


def test_demo_rerank_input_feeds_raw_decoder_output_resized():
    torch.manual_seed(0)
    vq = VQGAN(VQ16).eval()
    clip = FakeClip()
    tok = torch.randint(0, VQ16.codebook_size, (3, 4, 4))
    decoded = vq.decode_codes(tok).detach()
    scores = rerank_scores(clip, ["x"] * 3, decoded=decoded, rerank_input="demo")
    x = clip.unnormalised_inputs[-1]
    assert x.shape == (3, 3, 12, 12)  # bilinear to the CLIP input size
    want = F.interpolate(decoded, size=(12, 12), mode="bilinear", align_corners=False)
    assert torch.allclose(x, want)  # no clamping, no mean/std: the [-1,1] decoder output as is
    assert scores.shape == (3,)
    with pytest.raises(ValueError):
        rerank_scores(clip, ["x"], decoded=decoded[:1], rerank_input="bogus")
