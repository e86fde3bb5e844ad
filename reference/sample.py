"""Sampling: prefill + one-token decode steps, temperature / top-k / top-p, per-row seeded randomness, CLIP re-ranking.

Randomness: row i draws all its uniforms from its own torch.Generator seeded from the caller's per-caption seed
(candidate c of a caption uses ``mix_seed(seed, "candidate", c)``), and each token is drawn by inverting the CDF of
the filtered distribution at that row's uniform for the step. So a row's tokens depend only on its condition and
seed, never on which other rows share the batch or on the batch size. Cached and uncached decoding consume the same
uniforms, so they give identical samples.
"""
from __future__ import annotations

import hashlib
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from reference.gpt import GPT


def mix_seed(*parts) -> int:
    """A 63-bit seed derived from any parts (ints, strings)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# ---------------------------------------------------------------------------------------------------------------
# one step: filter the logits, draw a token
# ---------------------------------------------------------------------------------------------------------------

def filter_logits(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> Tensor:
    """logits [B,V] -> logits with the filtered-out entries at -inf.

    Divide by the temperature; keep the top-k (ties with the k-th value are kept); then nucleus filtering: sort
    descending, drop tokens whose softmax cumsum exceeds top_p with the mask shifted right by one (the first token
    crossing the threshold and the top-1 are always kept).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = logits.float() / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # [B,1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove = cum > top_p
        remove[:, 1:] = remove[:, :-1].clone()
        remove[:, 0] = False
        logits = logits.masked_fill(remove.scatter(1, order, remove), float("-inf"))
    return logits


def draw(logits: Tensor, uniforms: Tensor) -> Tensor:
    """Inverse-CDF sampling: logits [B,V] (filtered), uniforms [B] in [0,1) -> token ids int64 [B].

    Equivalent in distribution to torch.multinomial(softmax(logits), 1); a zero-probability token is never chosen.
    """
    probs = logits.softmax(-1)
    cdf = probs.cumsum(-1)  # [B,V]
    target = uniforms.to(cdf)[:, None] * cdf[:, -1:]  # [B,1]
    idx = torch.searchsorted(cdf, target, right=True)[:, 0]
    return idx.clamp_(max=logits.shape[-1] - 1)


def row_uniforms(seeds: list[int], steps: int, device) -> Tensor:
    """One generator per row: [B,steps] uniforms; row i depends only on seeds[i]."""
    rows = [torch.rand(steps, generator=torch.Generator().manual_seed(int(s) & ((1 << 63) - 1))) for s in seeds]
    return (torch.stack(rows) if rows else torch.zeros(0, steps)).to(device)


# ---------------------------------------------------------------------------------------------------------------
# token sampling
# ---------------------------------------------------------------------------------------------------------------

def _compiled_step(gpt: GPT) -> Callable:
    """torch.compile of the static-shape decode step (default mode: CUDA graphs would need the cache at static
    addresses, i.e. as module buffers, since the step writes into it)."""
    return torch.compile(gpt.decode_step_static, dynamic=False, fullgraph=True)


def sample_tokens(gpt: GPT, cond: Tensor, seeds: list[int], temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, use_cache: bool = True, backend: str | None = None,
                  compile: bool = False, return_logits: bool = False):
    """cond [B,cond_dim] -> tokens int64 [B,n_pos] (row-major grid order).

    use_cache=False recomputes the full prefix at every step (the plain twin of the static-KV-cache path).
    compile=True (with the cache) decodes through torch.compile of ``gpt.decode_step_static``: one trace for
    every position; the first call pays the compilation. It is meant for GPUs: on a 2-core CPU at tiny widths
    (256 positions, batch 8) the compiled step ran 2.7x slower than the eager one (it attends over the whole
    cache every step), after a 16 s compilation.
    With return_logits, also returns the raw logits of every step [B,n_pos,V].

    Runs under torch.inference_mode (~15% less per-op overhead than no_grad in the small-batch decode loop,
    measured on a 2-core CPU); what it returns are ordinary tensors.
    """
    if len(seeds) != cond.shape[0]:
        raise ValueError(f"got {len(seeds)} seeds for {cond.shape[0]} conditioning embeddings")
    was_training = gpt.training
    gpt.eval()
    try:
        with torch.inference_mode():
            tokens, logits = _sample_loop(gpt, cond, seeds, temperature, top_k, top_p, use_cache, backend,
                                          compile, return_logits)
    finally:
        gpt.train(was_training)
    # clones made outside inference mode are ordinary tensors (callers may write into them)
    if return_logits:
        return tokens.clone(), logits.clone()
    return tokens.clone()


def _sample_loop(gpt: GPT, cond: Tensor, seeds: list[int], temperature: float, top_k: int | None,
                 top_p: float | None, use_cache: bool, backend: str | None, compile: bool,
                 return_logits: bool) -> tuple[Tensor, Tensor | None]:
    """The token loop of sample_tokens: tokens [B,n_pos] and, with return_logits, logits [B,n_pos,V]."""
    device = gpt.pos_emb.device
    cond = cond.to(device)
    b, n = cond.shape[0], gpt.cfg.n_pos
    u = row_uniforms(seeds, n, device)
    tokens = torch.zeros(b, n, dtype=torch.long, device=device)
    all_logits = []
    compiled = _compiled_step(gpt) if compile and use_cache else None
    positions = torch.arange(n, device=device)
    cache = gpt.new_cache(b) if use_cache else None
    for i in range(n):
        if use_cache and i == 0:
            logits = gpt.prefill(cond, cache)
        elif compiled is not None:
            logits = compiled(tokens[:, i - 1], positions[i], cache)
            cache.length = i + 1
        elif use_cache:
            logits = gpt.decode_step(tokens[:, i - 1], cache, backend)
        else:
            logits = gpt(cond, tokens[:, :i])[:, -1]
        if return_logits:
            all_logits.append(logits.float())
        tokens[:, i] = draw(filter_logits(logits, temperature, top_k, top_p), u[:, i])
    return tokens, (torch.stack(all_logits, dim=1) if return_logits else None)


# ---------------------------------------------------------------------------------------------------------------
# images, candidates and re-ranking
# ---------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def rerank_scores(clip, captions: list[str], images: Tensor | None = None, decoded: Tensor | None = None,
                  rerank_input: str = "clip") -> Tensor:
    """Cosine similarity of each image to its caption [N].

    rerank_input="clip": uint8 ``images`` through the CLIP wrapper's own preprocessing.
    rerank_input="demo": the public demo's quirk: the VQGAN's float output ``decoded`` ([-1,1] range, unclamped)
    bilinearly resized to the CLIP input size and fed without CLIP mean/std normalisation.
    """
    text = F.normalize(clip.encode_text(list(captions)).float(), dim=-1)
    if rerank_input == "clip":
        img = clip.encode_image(images)
    elif rerank_input == "demo":
        size = int(clip.image_size)
        x = F.interpolate(decoded.float(), size=(size, size), mode="bilinear", align_corners=False)
        img = clip.encode_image_unnormalised(x)
    else:
        raise ValueError(f"rerank_input must be 'clip' or 'demo', got {rerank_input!r}")
    img = F.normalize(img.float(), dim=-1).to(text.device)
    return (img * text).sum(-1)


@torch.no_grad()
def generate(gpt: GPT, vqgan, cond_embeddings: Tensor, seeds: list[int], top_k: int | None = None,
             top_p: float | None = None, temperature: float = 1.0, candidates: int = 1, rerank_clip=None,
             captions: list[str] | None = None, rerank_input: str = "clip", batch_size: int = 64,
             use_cache: bool = True, backend: str | None = None, compile: bool = False,
             return_tokens: bool = False):
    """Text (or image) embeddings -> uint8 images [B,3,H,W] (and tokens [B,h,w] with return_tokens).

    One image per row of cond_embeddings, seeded by seeds[i]. With candidates > 1, each row draws that many
    candidates (candidate c seeded by mix_seed(seeds[i], "candidate", c)) and keeps the one rerank_clip scores
    highest against captions[i]. Rows are processed in chunks of batch_size sequences.
    """
    b = cond_embeddings.shape[0]
    if len(seeds) != b:
        raise ValueError(f"got {len(seeds)} seeds for {b} conditioning embeddings")
    if candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    if candidates > 1 and rerank_clip is None:
        raise ValueError("candidates > 1 needs rerank_clip (the CLIP that picks the best candidate)")
    if rerank_clip is not None and (captions is None or len(captions) != b):
        raise ValueError("re-ranking needs one caption per conditioning embedding (captions=...)")
    cond = cond_embeddings.float().repeat_interleave(candidates, dim=0)  # [B*C,D]
    row_seeds = [mix_seed(int(s), "candidate", c) for s in seeds for c in range(candidates)]
    row_caps = [c for c in (captions or [""] * b) for _ in range(candidates)]
    tokens, images, scores = [], [], []
    for start in range(0, b * candidates, batch_size):
        sl = slice(start, start + batch_size)
        tok = sample_tokens(gpt, cond[sl], row_seeds[sl], temperature, top_k, top_p, use_cache, backend, compile)
        decoded = vqgan.decode_codes(tok) if rerank_clip is not None and rerank_input == "demo" else None
        img = vqgan.decode_tokens(tok)
        if rerank_clip is not None:
            scores.append(rerank_scores(rerank_clip, row_caps[sl], img, decoded, rerank_input).cpu())
        tokens.append(tok.cpu())
        images.append(img)
    grid = vqgan.grid
    tokens = torch.cat(tokens).reshape(b, candidates, grid, grid)  # [B*C,n] -> [B,C,h,w]
    images = torch.cat(images)
    images = images.reshape(b, candidates, *images.shape[1:])  # [B*C,3,H,W] -> [B,C,3,H,W]
    if candidates > 1:
        best = torch.cat(scores).reshape(b, candidates).argmax(1)  # [B]
    else:
        best = torch.zeros(b, dtype=torch.long)
    ar = torch.arange(b)
    out_images, out_tokens = images[ar, best], tokens[ar, best]
    return (out_images, out_tokens) if return_tokens else out_images
