"""Conditional GPT: p(image tokens | CLIP embedding), pre-LN, with a static KV cache for decoding.

Sequence layout (as in the public HFAiLab CLIP-GEN GPT, tests/data/formats/hfailab-clipgen-gpt.json):
position 0 holds ``cond_proj(normalize(e))``, positions 1..n_pos-1 hold image tokens 0..n_pos-2; the logits at
position i predict image token i. No BOS, no special tokens; ``pos_emb`` [1,n_pos,d] is added at every position.

Parameter names match that checkpoint (``tok_emb``, ``pos_emb``, ``cond_proj``,
``blocks.N.encoder.{self_attn.in_proj_weight, self_attn.in_proj_bias, self_attn.out_proj, linear1, linear2,
norm1, norm2}``, ``norm``, ``head``), so its ``model`` dict loads after dropping the ``blocks.N.mask`` buffers
(here the causal mask comes from SDPA's ``is_causal``).

Reading order: config (reference/configs.py) -> attention -> block -> KVCache -> GPT (training forward,
prefill, one-token decode step, and its static-shape twin for torch.compile).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from reference.configs import GPTConfig


class SelfAttention(nn.Module):
    """Multi-head causal self-attention with a fused qkv projection laid out like nn.MultiheadAttention."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        d = cfg.n_embd
        self.n_head = cfg.n_head
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d, d))  # rows: q, k, v
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d))
        self.out_proj = nn.Linear(d, d)
        nn.init.xavier_uniform_(self.in_proj_weight)
        self.dropout = cfg.dropout

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, t, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # [B,T,3d]
        qkv = qkv.view(b, t, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)  # -> [3,B,H,T,Dh]
        return qkv[0], qkv[1], qkv[2]

    def forward(self, x: Tensor, cache: "KVCache | None" = None, layer: int = 0) -> Tensor:
        """Causal attention over x [B,T,d]; with a cache, positions 0..T-1 are also written into it (prefill)."""
        b, t, d = x.shape
        q, k, v = self._qkv(x)
        if cache is not None:
            cache.k[layer, :b, :, :t] = k
            cache.v[layer, :b, :, :t] = v
        y = self._attend(q, k, v)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, d))  # [B,H,T,Dh] -> [B,T,d]

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Causal attention, q/k/v [B,H,T,Dh] -> [B,H,T,Dh]."""
        dropout = self.dropout if self.training else 0.0
        if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # CPU bf16 autocast: attention in fp32 (its bf16 backward is several times slower than fp32's here)
            with torch.autocast("cpu", enabled=False):
                y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True, dropout_p=dropout)
            return y.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)

    def decode(self, x: Tensor, cache: "KVCache", layer: int, pos: int | Tensor, backend: str) -> Tensor:
        """One new position: x [B,1,d] at sequence position ``pos``; writes k/v at pos, attends to 0..pos.

        ``pos`` an int: attention over the slice 0..pos; a 0-d tensor: over the whole cache, masked past pos."""
        from reference.kernels import decode_attention

        b, _, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # [B,1,3d]
        q, k, v = qkv.view(b, 3, self.n_head, d // self.n_head).unbind(1)  # -> [B,3,H,Dh] -> [B,H,Dh] each
        k_cache, v_cache = cache.k[layer, :b], cache.v[layer, :b]  # [B,H,T,Dh]
        if isinstance(pos, Tensor):  # index_copy_: what torch.compile lowers for a tensor position
            k_cache.index_copy_(2, pos.view(1), k[:, :, None])
            v_cache.index_copy_(2, pos.view(1), v[:, :, None])
        else:
            k_cache[:, :, pos] = k
            v_cache[:, :, pos] = v
        y = decode_attention(q, k_cache, v_cache, pos + 1, backend=backend)  # [B,H,Dh]
        return self.out_proj(y.view(b, 1, d))  # [B,H,Dh] -> [B,1,d]


class EncoderLayer(nn.Module):
    """Pre-LN block with nn.TransformerEncoderLayer's parameter names (norm_first=True, erf-GELU)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.self_attn = SelfAttention(cfg)
        self.linear1 = nn.Linear(cfg.n_embd, cfg.ffn_dim)
        self.linear2 = nn.Linear(cfg.ffn_dim, cfg.n_embd)
        self.norm1 = nn.LayerNorm(cfg.n_embd, eps=cfg.ln_eps)
        self.norm2 = nn.LayerNorm(cfg.n_embd, eps=cfg.ln_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def mlp(self, x: Tensor) -> Tensor:
        return self.drop(self.linear2(self.drop(F.gelu(self.linear1(self.norm2(x))))))

    def forward(self, x: Tensor, cache: "KVCache | None" = None, layer: int = 0) -> Tensor:
        x = x + self.drop(self.self_attn(self.norm1(x), cache, layer))
        return x + self.mlp(x)

    def decode(self, x: Tensor, cache: "KVCache", layer: int, pos: int | Tensor, backend: str) -> Tensor:
        x = x + self.self_attn.decode(self.norm1(x), cache, layer, pos, backend)
        return x + self.mlp(x)


class Block(nn.Module):
    """Wrapper giving the HFAiLab key prefix ``blocks.N.encoder.*``."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.encoder = EncoderLayer(cfg)


class KVCache:
    """Keys and values for every layer, allocated once at full length and written in place: [L,B,H,n_pos,Dh]."""

    def __init__(self, cfg: GPTConfig, batch_size: int, device, dtype=torch.float32):
        shape = (cfg.n_layer, batch_size, cfg.n_head, cfg.n_pos, cfg.n_embd // cfg.n_head)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # positions filled

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.n_embd
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.pos_emb = nn.Parameter(torch.zeros(1, cfg.n_pos, d))
        self.cond_proj = nn.Linear(cfg.cond_dim, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.norm = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.head = nn.Linear(d, cfg.vocab_size)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- embedding -----------------------------------------------------------------------------------------------
    def embed(self, cond: Tensor, tokens: Tensor | None, start: int = 0) -> Tensor:
        """cond [B,cond_dim] (normalised here), tokens [B,L] -> x [B,1+L,d] at positions start.. (prefix included
        only when start == 0)."""
        if cond.shape[-1] != self.cfg.cond_dim:
            raise ValueError(f"conditioning embedding has {cond.shape[-1]} dims, the GPT expects {self.cfg.cond_dim}")
        e = F.normalize(cond.float(), dim=-1).to(self.cond_proj.weight.dtype)
        parts = [self.cond_proj(e)[:, None]]  # [B,1,d]
        if tokens is not None and tokens.shape[1] > 0:
            parts.append(self.tok_emb(tokens))  # [B,L,d]
        x = torch.cat(parts, dim=1)
        t = x.shape[1]
        if t > self.cfg.n_pos:
            raise ValueError(f"sequence of {t} positions exceeds n_pos={self.cfg.n_pos}")
        return self.drop(x + self.pos_emb[:, :t])

    # -- training / uncached forward -----------------------------------------------------------------------------
    def forward(self, cond: Tensor, tokens: Tensor | None = None, cache: KVCache | None = None) -> Tensor:
        """cond [B,cond_dim], tokens [B,L] (L <= n_pos-1) -> logits [B,1+L,vocab]; logits[:, i] predict token i.

        With a cache the keys/values of all 1+L positions are written into it (prefill).
        """
        x = self.embed(cond, tokens)
        for i, blk in enumerate(self.blocks):
            x = blk.encoder(x, cache, i)
        if cache is not None:
            cache.length = x.shape[1]
        return self.head(self.norm(x))

    def loss(self, cond: Tensor, tokens: Tensor) -> Tensor:
        """Cross-entropy of all n_pos image tokens given the condition: tokens [B,n_pos]."""
        logits = self(cond, tokens[:, :-1])  # [B,n_pos,V]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1))

    # -- cached decoding -----------------------------------------------------------------------------------------
    def new_cache(self, batch_size: int) -> KVCache:
        p = self.pos_emb
        return KVCache(self.cfg, batch_size, p.device, p.dtype)

    @torch.no_grad()
    def prefill(self, cond: Tensor, cache: KVCache, tokens: Tensor | None = None) -> Tensor:
        """Fill the cache with the prefix (and any given tokens); returns logits of the last position [B,V]."""
        return self(cond, tokens, cache)[:, -1]

    @torch.no_grad()
    def decode_step(self, token: Tensor, cache: KVCache, backend: str | None = None) -> Tensor:
        """Feed image token [B] at the next position (cache.length); returns its logits [B,V] (the next token).

        Attends to the filled prefix only (its length is a Python int): the fastest eager step."""
        pos = cache.length
        if pos >= self.cfg.n_pos:
            raise ValueError(f"the cache is full ({self.cfg.n_pos} positions)")
        x = self.tok_emb(token[:, None]) + self.pos_emb[:, pos:pos + 1]  # [B,1,d]
        logits = self._decode(x, cache, pos, backend or self.cfg.decode_backend)
        cache.length = pos + 1
        return logits

    @torch.no_grad()
    def decode_step_static(self, token: Tensor, pos: Tensor, cache: KVCache) -> Tensor:
        """decode_step for torch.compile: the position is a 0-d int64 tensor and attention runs over the whole
        cache, masked past ``pos``, so no shape depends on the position and the step is traced once (static shapes
        are also what CUDA graphs need). decode_step with an int position recompiles at every position instead.

        Feeds token [B] at position ``pos``; returns logits [B,V]. Leaves cache.length to the caller and does not
        check ``pos`` (that would read the tensor back from the device every step)."""
        x = self.tok_emb(token[:, None]) + self.pos_emb.index_select(1, pos.view(1))  # [B,1,d]
        return self._decode(x, cache, pos, "sdpa")

    def _decode(self, x: Tensor, cache: KVCache, pos: int | Tensor, backend: str) -> Tensor:
        """x [B,1,d] at position pos through every block (reading and extending the cache) -> logits [B,V]."""
        for i, blk in enumerate(self.blocks):
            x = blk.encoder.decode(x, cache, i, pos, backend)
        return self.head(self.norm(x))[:, 0]
