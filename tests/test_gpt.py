"""Conditional GPT: HFAiLab layout, equivalence with nn.TransformerEncoderLayer, causality, cached == uncached."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from reference.configs import GPTConfig, get_preset, with_overrides
from reference.gpt import GPT
from reference.sample import sample_tokens

TINY = get_preset("tiny").gpt
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny per-step ops: one thread is far faster on a busy CPU


def small_cfg(**kw) -> GPTConfig:
    return with_overrides(TINY, n_layer=2, n_embd=32, n_head=4, ffn_dim=64, vocab_size=50, cond_dim=16, grid=5,
                          n_pos=25, **kw)


def test_paper_layout_matches_hfailab_checkpoint():
    with torch.device("meta"):
        model = GPT(get_preset("paper").gpt)
    sd = model.state_dict()
    assert sum(v.numel() for v in sd.values()) == 336669696  # tests/data/formats/hfailab-clipgen-gpt.json
    assert sd["pos_emb"].shape == (1, 256, 1024)
    assert sd["tok_emb.weight"].shape == (16384, 1024)
    assert sd["cond_proj.weight"].shape == (1024, 512)
    assert sd["head.bias"].shape == (16384,)
    assert sd["blocks.23.encoder.self_attn.in_proj_weight"].shape == (3072, 1024)
    assert sd["blocks.0.encoder.linear1.weight"].shape == (4096, 1024)
    assert {k.split(".", 3)[-1] for k in sd if k.startswith("blocks.0.")} == {
        "self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight", "self_attn.out_proj.bias",
        "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias", "norm1.weight", "norm1.bias",
        "norm2.weight", "norm2.bias"}
    assert model.head.weight is not model.tok_emb.weight  # untied


def test_block_equals_torch_transformer_encoder_layer():
    """Our block computes exactly what HFAiLab's nn.TransformerEncoderLayer(norm_first, gelu) does."""
    torch.manual_seed(0)
    cfg = small_cfg()
    model = GPT(cfg).eval()
    with torch.no_grad():  # every parameter away from its init (norms at 1 and biases at 0 would hide swaps)
        for p in model.blocks[0].encoder.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ref = nn.TransformerEncoderLayer(cfg.n_embd, cfg.n_head, cfg.ffn_dim, dropout=0.0, activation=F.gelu,
                                     batch_first=True, norm_first=True).eval()
    ref.load_state_dict(model.blocks[0].encoder.state_dict(), strict=True)
    x = torch.randn(3, 10, cfg.n_embd)
    mask = torch.ones(10, 10, dtype=torch.bool).triu(1)  # True = masked (HFAiLab's blocks.N.mask)
    want = ref(x, src_mask=mask)
    got = model.blocks[0].encoder(x)
    assert torch.allclose(got, want, atol=1e-5)


def test_sequence_layout_and_causality():
    torch.manual_seed(1)
    cfg = small_cfg()
    model = GPT(cfg).eval()
    cond = torch.randn(2, cfg.cond_dim)
    tok = torch.randint(0, cfg.vocab_size, (2, cfg.n_pos - 1))
    logits = model(cond, tok)
    assert logits.shape == (2, cfg.n_pos, cfg.vocab_size)  # position i predicts token i, no BOS
    tok2 = tok.clone()
    tok2[:, 10] = (tok2[:, 10] + 1) % cfg.vocab_size  # token 10 sits at position 11
    logits2 = model(cond, tok2)
    assert torch.allclose(logits[:, :11], logits2[:, :11], atol=1e-6)
    assert not torch.allclose(logits[:, 11:], logits2[:, 11:])
    # the embedding is L2-normalised inside: scaling it changes nothing
    assert torch.allclose(model(cond * 7.0, tok[:, :3]), model(cond, tok[:, :3]), atol=1e-5)
    loss = model.loss(cond, torch.cat([tok, tok[:, :1]], 1)).detach()
    assert abs(float(loss) - float(torch.log(torch.tensor(float(cfg.vocab_size))))) < 1.0
    with pytest.raises(ValueError):
        model(cond, torch.randint(0, cfg.vocab_size, (2, cfg.n_pos)))
    with pytest.raises(ValueError):
        model(torch.randn(2, cfg.cond_dim + 1), tok)


def test_cached_decoding_equals_full_recomputation():
    torch.manual_seed(2)
    cfg = small_cfg()
    model = GPT(cfg).eval()
    cond = torch.randn(3, cfg.cond_dim)
    seeds = [11, 12, 13]
    tok_c, log_c = sample_tokens(model, cond, seeds, top_k=20, use_cache=True, return_logits=True)
    tok_u, log_u = sample_tokens(model, cond, seeds, top_k=20, use_cache=False, return_logits=True)
    assert torch.equal(tok_c, tok_u)
    assert (log_c - log_u).abs().max() < 1e-5  # every step
    # and against a teacher-forced forward over the final sequence
    full = model(cond, tok_c[:, :-1])
    assert (full - log_c).abs().max() < 1e-5


def test_static_decode_step_equals_decode_step():
    """The static-shape twin (tensor position, whole cache masked) gives the eager step's logits and cache."""
    torch.manual_seed(4)
    cfg = small_cfg()
    model = GPT(cfg).eval()
    cond = torch.randn(3, cfg.cond_dim)
    eager, static = model.new_cache(3), model.new_cache(3)
    tok = model.prefill(cond, eager).argmax(-1)
    model.prefill(cond, static)
    for pos in range(1, cfg.n_pos):
        want = model.decode_step(tok, eager)
        got = model.decode_step_static(tok, torch.tensor(pos), static)
        assert (got - want).abs().max() < 1e-5, pos
        tok = want.argmax(-1)
    assert torch.allclose(static.k, eager.k, atol=1e-6) and torch.allclose(static.v, eager.v, atol=1e-6)


def test_compiled_decoding_traces_once_and_draws_the_same_tokens():
    """torch.compile of the static step sees one graph for every position (decode_step, whose position is a
    Python int, would recompile at each); counted with dynamo's eager backend, then sampled through inductor."""
    from torch._dynamo.testing import CompileCounter

    torch.manual_seed(5)
    cfg = with_overrides(small_cfg(), grid=3, n_pos=9)
    model = GPT(cfg).eval()
    cond = torch.randn(2, cfg.cond_dim)
    counter = CompileCounter()
    torch._dynamo.reset()
    step = torch.compile(model.decode_step_static, backend=counter, dynamic=False, fullgraph=True)
    cache, ref = model.new_cache(2), model.new_cache(2)
    tok = model.prefill(cond, cache).argmax(-1)
    model.prefill(cond, ref)
    with torch.no_grad():
        for pos in range(1, cfg.n_pos):
            got = step(tok, torch.tensor(pos), cache)
            want = model.decode_step(tok, ref)
            assert (got - want).abs().max() < 1e-5, pos
            tok = want.argmax(-1)
    assert counter.frame_count == 1
    tok_c, log_c = sample_tokens(model, cond, [1, 2], top_k=20, compile=True, return_logits=True)
    tok_e, log_e = sample_tokens(model, cond, [1, 2], top_k=20, return_logits=True)
    assert torch.equal(tok_c, tok_e) and (log_c - log_e).abs().max() < 1e-5


def test_kv_cache_is_static_and_written_in_place():
    torch.manual_seed(3)
    cfg = small_cfg()
    model = GPT(cfg).eval()
    cache = model.new_cache(2)
    k_ptr = cache.k.data_ptr()
    assert cache.k.shape == (cfg.n_layer, 2, cfg.n_head, cfg.n_pos, cfg.n_embd // cfg.n_head)
    logits = model.prefill(torch.randn(2, cfg.cond_dim), cache)
    for _ in range(cfg.n_pos - 1):
        logits = model.decode_step(logits.argmax(-1), cache)
    assert cache.length == cfg.n_pos and cache.k.data_ptr() == k_ptr
    with pytest.raises(ValueError):
        model.decode_step(logits.argmax(-1), cache)


def test_config_validation():
    with pytest.raises(ValueError):
        with_overrides(TINY, n_embd=130)
    with pytest.raises(ValueError):
        with_overrides(TINY, grid=7)
    with pytest.raises(ValueError):
        with_overrides(TINY, not_a_field=1)
    with pytest.raises(ValueError):
        get_preset("huge")
