"""Sampling semantics pinned against independent float64 references (a hand mutation audit of reference/sample.py
and reference/gpt.py): top-k / top-p / temperature on brute-force loops over small vocabularies, inverse-CDF draws,
the per-row uniform stream, greedy top_k=1, what generate() passes on, cosine re-ranking, the KV cache with
non-zero position embeddings (a fresh GPT's pos_emb is all zeros, which hides any position mix-up)."""
import math

import numpy as np
import pytest
import torch

from reference.configs import get_preset, with_overrides
from reference.gpt import GPT
from reference.sample import draw, filter_logits, generate, mix_seed, rerank_scores, sample_tokens
from reference.vqgan import VQGAN

TINY = get_preset("tiny")
VQ16 = with_overrides(TINY.vqgan, resolution=16)  # 4x4 tokens
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny per-step ops: one thread is far faster on a busy CPU
MARGIN = 1e-5  # float32 vs float64: every threshold a test relies on is at least this far away


# ---------------------------------------------------------------------------------------------------------------
# independent references (float64, plain loops)
# ---------------------------------------------------------------------------------------------------------------

def ref_keep(row, temperature=1.0, top_k=None, top_p=None):
    """Which tokens survive: a Python loop over one row of logits. Returns (keep mask, tempered logits, the
    cumulative masses the nucleus loop compared with top_p)."""
    z = np.asarray(row, dtype=np.float64) / temperature
    v = len(z)
    keep = np.ones(v, dtype=bool)
    if top_k is not None and 0 < top_k < v:
        kth = sorted(z, reverse=True)[top_k - 1]
        keep = np.array([zi >= kth for zi in z])  # ties with the k-th value stay
    compared = []
    if top_p is not None and top_p < 1.0:
        w = np.where(keep, np.exp(z - z[keep].max()), 0.0)
        probs = w / w.sum()  # renormalised over what top-k kept
        nucleus, mass = np.zeros(v, dtype=bool), 0.0
        for j in sorted(np.flatnonzero(keep), key=lambda j: -z[j]):
            if nucleus.any() and mass > top_p:  # the top-1 always stays; then add until the mass *exceeds* top_p
                break
            nucleus[j] = True
            mass += probs[j]
            compared.append(mass)
        keep = nucleus
    return keep, z, compared


def ref_draw(z, keep, u):
    """Inverse CDF of softmax(z) restricted to keep at u, over the tokens in vocabulary order."""
    w = np.where(keep, np.exp(z - z[keep].max()), 0.0)
    cdf = np.cumsum(w / w.sum())
    assert np.abs(cdf - u).min() > MARGIN  # the test data keeps u away from every CDF step
    return int(np.flatnonzero(cdf > u)[0])


def tiny_gpt(seed=0, vocab=64, peaky=6.0, **kw):
    """A small GPT with every parameter random (pos_emb included), a strong condition and a sharpened head, so
    distributions are peaked and condition or position mix-ups show."""
    torch.manual_seed(seed)
    cfg = with_overrides(TINY.gpt, n_layer=2, n_embd=32, n_head=4, ffn_dim=64, cond_dim=16, grid=4, n_pos=16,
                         vocab_size=vocab, **kw)
    model = GPT(cfg).eval()
    with torch.no_grad():
        model.pos_emb.normal_(0, 0.5)
        model.cond_proj.weight.normal_(0, 0.5)  # the condition steers the tokens
        for p in model.blocks.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.head.weight.mul_(peaky)
    return model


# ---------------------------------------------------------------------------------------------------------------
# filter_logits
# ---------------------------------------------------------------------------------------------------------------

def test_top_k_keeps_exactly_the_k_largest_and_their_ties_for_every_k():
    g = torch.Generator().manual_seed(0)
    distinct = torch.randn(4, 12, generator=g) * 2
    tied = torch.randint(0, 4, (4, 12), generator=g).float()  # many ties
    for logits in (distinct, tied):
        for k in range(1, 13):
            got = torch.isfinite(filter_logits(logits, top_k=k))
            want = torch.tensor(np.stack([ref_keep(r, top_k=k)[0] for r in logits.numpy()]))
            assert torch.equal(got, want), k
            if logits is distinct:
                assert got.sum(-1).tolist() == [k] * 4
    assert torch.isfinite(filter_logits(distinct, top_k=1)).sum(-1).tolist() == [1] * 4  # top_k=1: the argmax only
    assert torch.isfinite(filter_logits(distinct, top_k=1)).float().argmax(-1).tolist() == distinct.argmax(-1).tolist()


def test_temperature_top_k_and_top_p_together_match_a_brute_force_nucleus():
    """Temperature first, then top-k, then the nucleus of the *renormalised* top-k distribution; kept logits are the
    tempered ones, exactly."""
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(16, 24, generator=g) * 2.5
    checked = 0
    for temperature in (0.6, 1.0, 1.7):
        for top_k in (None, 5, 12):
            for top_p in (0.3, 0.75, 0.95):
                got = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
                for r in range(logits.shape[0]):
                    keep, z, compared = ref_keep(logits[r].double().numpy(), temperature, top_k, top_p)
                    assert np.abs(np.array(compared) - top_p).min() > MARGIN  # sharp: no boundary within fp error
                    assert torch.isfinite(got[r]).numpy().tolist() == keep.tolist(), (temperature, top_k, top_p, r)
                    assert torch.equal(got[r][torch.from_numpy(keep)], logits[r][torch.from_numpy(keep)] / temperature)
                    checked += 1
    # top-p on the renormalised top-k distribution keeps fewer tokens than on the full one: the order is visible
    k5 = torch.isfinite(filter_logits(logits, top_k=5, top_p=0.75)).sum()
    full = (torch.isfinite(filter_logits(logits, top_k=5)) & torch.isfinite(filter_logits(logits, top_p=0.75))).sum()
    assert k5 < full and checked == 16 * 27


def test_top_p_of_one_keeps_every_token_even_when_the_float_cumsum_passes_one():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 50, generator=g) * 3
    cum = logits.softmax(-1).sort(-1, descending=True).values.cumsum(-1)
    assert (cum[:, :-1] > 1.0).any()  # rounding does push some cumsums past 1 before the last token
    assert torch.isfinite(filter_logits(logits, top_p=1.0)).all()
    assert torch.equal(filter_logits(logits, top_p=1.0), logits)


def test_half_precision_logits_are_filtered_in_float32():
    """bf16 logits (autocast sampling) are cast before the temperature: the result is the float32 computation."""
    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(6, 40, generator=g) * 4).bfloat16()
    for kw in ({"temperature": 0.7}, {"temperature": 0.7, "top_k": 9, "top_p": 0.8}, {"top_p": 0.9}):
        out = filter_logits(logits, **kw)
        assert out.dtype == torch.float32
        assert torch.equal(out, filter_logits(logits.float(), **kw)), kw


# ---------------------------------------------------------------------------------------------------------------
# draw
# ---------------------------------------------------------------------------------------------------------------

def test_draw_is_the_inverse_cdf_for_large_logits_and_never_picks_a_zero_probability_token():
    g = torch.Generator().manual_seed(5)
    # low temperature: tempered logits in the hundreds (exp would overflow); the CDF is still that of softmax
    logits = filter_logits(torch.randn(8, 30, generator=g) * 3, temperature=0.02, top_k=6)
    assert logits[torch.isfinite(logits)].abs().max() > 100
    u = torch.tensor([0.05, 0.2, 0.35, 0.5, 0.62, 0.77, 0.9, 0.97])
    got = draw(logits, u)
    want = [ref_draw(logits[r].double().numpy(), torch.isfinite(logits[r]).numpy(), float(u[r])) for r in range(8)]
    assert got.tolist() == want
    # the float32 CDF of some rows ends below the largest uniform: the draw still lands on a kept token
    x = torch.randn(200, 50, generator=g) * 3
    x[:, 40:] = float("-inf")  # the last tokens of the vocabulary are filtered out
    u_max = torch.full((200,), 1.0 - 2.0 ** -24)  # the largest float32 below 1 (torch.rand's range is [0, 1))
    assert (x.softmax(-1).cumsum(-1)[:, -1] < u_max).any()  # sharp
    tok = draw(x, u_max)
    assert (tok < 40).all() and torch.isfinite(x.gather(1, tok[:, None])).all()


# ---------------------------------------------------------------------------------------------------------------
# sample_tokens
# ---------------------------------------------------------------------------------------------------------------

def test_sample_tokens_draw_step_i_at_the_row_generators_i_th_uniform():
    """Token i of a row = inverse CDF of the filtered (tempered, top-k, top-p) distribution of the teacher-forced
    logits at position i, at the i-th uniform of torch.Generator().manual_seed(seed): an independent recomputation
    of every step."""
    model = tiny_gpt(1)
    cond = torch.randn(3, model.cfg.cond_dim)
    seeds = [21, 22, mix_seed(5, "candidate", 2)]
    settings = dict(temperature=0.8, top_k=12, top_p=0.9)
    tokens = sample_tokens(model, cond, seeds, **settings)
    with torch.no_grad():
        logits = model(cond, tokens[:, :-1]).double()  # [B,n_pos,V]
    n = model.cfg.n_pos
    for r, s in enumerate(seeds):
        u = torch.rand(n, generator=torch.Generator().manual_seed(s)).double().numpy()
        for i in range(n):
            keep, z, compared = ref_keep(logits[r, i].numpy(), **settings)
            assert not compared or np.abs(np.array(compared) - 0.9).min() > MARGIN
            assert int(tokens[r, i]) == ref_draw(z, keep, u[i]), (r, i)
    # the settings are all in effect: plain sampling from the same seeds draws other tokens
    assert not torch.equal(tokens, sample_tokens(model, cond, seeds))
    assert not torch.equal(tokens, sample_tokens(model, cond, seeds, top_k=12, top_p=0.9))


def test_top_k_one_is_greedy_decoding_whatever_the_seed():
    model = tiny_gpt(2, peaky=1.0)  # flat distributions: sampling without the top-k would wander off the argmax
    cond = torch.randn(2, model.cfg.cond_dim)
    a = sample_tokens(model, cond, [1, 2], top_k=1)
    b = sample_tokens(model, cond, [3, 4], top_k=1, temperature=5.0)
    greedy = torch.zeros(2, 0, dtype=torch.long)
    with torch.no_grad():
        for _ in range(model.cfg.n_pos):
            greedy = torch.cat([greedy, model(cond, greedy)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(a, greedy) and torch.equal(b, greedy)
    assert not torch.equal(sample_tokens(model, cond, [1, 2]), greedy)


def test_sample_tokens_runs_in_eval_mode_and_restores_training():
    model = tiny_gpt(3, dropout=0.5)
    cond = torch.randn(2, model.cfg.cond_dim)
    want = sample_tokens(model, cond, [7, 8], top_k=10)  # model in eval mode
    model.train()
    torch.manual_seed(0)
    assert torch.equal(sample_tokens(model, cond, [7, 8], top_k=10), want)  # dropout off while sampling
    assert torch.equal(sample_tokens(model, cond, [7, 8], top_k=10, use_cache=False), want)
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    sample_tokens(model, cond, [7, 8], top_k=10)
    assert not model.training
    with pytest.raises(ValueError):
        sample_tokens(model, cond, [7])


# ---------------------------------------------------------------------------------------------------------------
# GPT: KV cache with non-zero position embeddings
# ---------------------------------------------------------------------------------------------------------------

def test_cached_and_static_decoding_use_each_positions_embedding():
    model = tiny_gpt(4)
    assert model.pos_emb.abs().min() > 0
    cond = torch.randn(2, model.cfg.cond_dim)
    tok_c, log_c = sample_tokens(model, cond, [1, 2], top_k=20, return_logits=True)
    tok_u, log_u = sample_tokens(model, cond, [1, 2], top_k=20, use_cache=False, return_logits=True)
    assert torch.equal(tok_c, tok_u) and (log_c - log_u).abs().max() < 1e-4
    with torch.no_grad():
        full = model(cond, tok_c[:, :-1])
    assert (full - log_c).abs().max() < 1e-4
    # the position embedding does matter here (so the checks above can see a wrong position)
    with torch.no_grad():
        shifted = GPT(model.cfg).eval()
        shifted.load_state_dict(model.state_dict())
        shifted.pos_emb.copy_(model.pos_emb.roll(1, dims=1))
        assert (shifted(cond, tok_c[:, :-1]) - full).abs().max() > 1e-2
    # the static-shape step (tensor position, whole cache) against the teacher-forced logits
    cache = model.new_cache(2)
    assert (model.prefill(cond, cache) - full[:, 0]).abs().max() < 1e-4
    for pos in range(1, model.cfg.n_pos):
        got = model.decode_step_static(tok_c[:, pos - 1], torch.tensor(pos), cache)
        assert (got - full[:, pos]).abs().max() < 1e-4, pos


def test_prefill_with_tokens_continues_like_the_full_forward():
    model = tiny_gpt(5)
    cond = torch.randn(2, model.cfg.cond_dim)
    tok = torch.randint(0, model.cfg.vocab_size, (2, model.cfg.n_pos - 1), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(cond, tok)
    cache = model.new_cache(2)
    logits = model.prefill(cond, cache, tok[:, :5])  # the condition and 5 tokens: positions 0..5
    assert cache.length == 6
    assert (logits - full[:, 5]).abs().max() < 1e-4
    for i in range(5, 9):
        logits = model.decode_step(tok[:, i], cache)
        assert (logits - full[:, i + 1]).abs().max() < 1e-4, i
    assert cache.length == 10


def test_cache_follows_the_model_dtype():
    model = tiny_gpt(6).to(torch.bfloat16)
    cache = model.new_cache(2)
    assert cache.k.dtype == cache.v.dtype == torch.bfloat16
    cond = torch.randn(2, model.cfg.cond_dim)
    tok = sample_tokens(model, cond, [1, 2], top_k=5)
    assert tok.dtype == torch.long and tok.shape == (2, model.cfg.n_pos)
    assert ((0 <= tok) & (tok < model.cfg.vocab_size)).all()


# ---------------------------------------------------------------------------------------------------------------
# generate and re-ranking
# ---------------------------------------------------------------------------------------------------------------

def test_generate_passes_temperature_and_top_p_and_seeds_candidate_zero():
    model = tiny_gpt(7, vocab=VQ16.codebook_size)
    torch.manual_seed(0)
    vq = VQGAN(VQ16).eval()
    cond = torch.randn(2, model.cfg.cond_dim)
    settings = dict(temperature=0.6, top_k=30, top_p=0.7)
    _, tok = generate(model, vq, cond, [3, 4], return_tokens=True, **settings)
    seeds = [mix_seed(3, "candidate", 0), mix_seed(4, "candidate", 0)]  # a single candidate is candidate 0
    want = sample_tokens(model, cond, seeds, **settings)
    assert torch.equal(tok.reshape(2, -1), want)
    for other in (dict(settings, temperature=1.0), dict(settings, top_p=None)):
        assert not torch.equal(sample_tokens(model, cond, seeds, **other), want)  # each setting changes the draw


class ScaledTextClip:
    """Text embeddings of different lengths per caption; images embed as (brightness, 1 - brightness) * 3."""

    TEXT = {"bright": [2.0, 0.5], "dark": [0.1, 0.4]}

    def encode_text(self, captions):
        return torch.tensor([self.TEXT[c] for c in captions])

    def encode_image(self, images):
        b = images.float().mean((1, 2, 3)) / 255.0
        return 3 * torch.stack([b, 1 - b], 1)


def test_rerank_scores_are_cosine_similarities_whatever_the_text_norm():
    clip = ScaledTextClip()
    images = torch.randint(0, 256, (4, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    caps = ["bright", "dark", "dark", "bright"]
    got = rerank_scores(clip, caps, images)
    for i, cap in enumerate(caps):
        a = clip.encode_image(images[i:i + 1])[0].double().numpy()
        t = np.array(clip.TEXT[cap])
        assert math.isclose(float(got[i]), float(a @ t / np.linalg.norm(a) / np.linalg.norm(t)), abs_tol=1e-6)
    assert (got.abs() <= 1 + 1e-6).all()


class BrightnessClip:
    """Scores an image by its brightness (the caption is ignored): the best candidate is the brightest."""

    def encode_text(self, captions):
        return torch.tensor([[1.0, 0.0]]).expand(len(captions), 2)

    def encode_image(self, images):
        b = images.float().mean((1, 2, 3)) / 255.0
        return torch.stack([b, 1 - b], 1)


def test_generate_candidates_use_their_own_condition_and_chunking_does_not_matter():
    model = tiny_gpt(8, vocab=VQ16.codebook_size)
    torch.manual_seed(0)
    vq = VQGAN(VQ16).eval()
    cond = torch.randn(2, model.cfg.cond_dim)
    seeds, n = [5, 6], 3
    outs = [generate(model, vq, cond, seeds, top_k=30, candidates=n, rerank_clip=BrightnessClip(),
                     captions=["a", "b"], batch_size=bs, return_tokens=True) for bs in (64, 4, 1)]
    for imgs, tok in outs[1:]:  # chunks that split a caption's candidates
        assert torch.equal(tok, outs[0][1]) and torch.equal(imgs, outs[0][0])
    best_img, best_tok = outs[0]
    for i, s in enumerate(seeds):
        row_seeds = [mix_seed(s, "candidate", c) for c in range(n)]
        rows = sample_tokens(model, cond[i:i + 1].expand(n, -1), row_seeds, top_k=30)
        cands = vq.decode_tokens(rows)
        cos = [float(np.dot(e, [1.0, 0.0]) / np.linalg.norm(e)) for e in BrightnessClip().encode_image(cands).numpy()]
        j = int(np.argmax(cos))
        assert torch.equal(best_tok[i].flatten(), rows[j]) and torch.equal(best_img[i], cands[j])
        # the other caption's condition would have drawn other candidates: the check above can tell them apart
        other = sample_tokens(model, cond[1 - i:2 - i].expand(n, -1), row_seeds, top_k=30)
        assert not torch.equal(other, rows)
