"""The reference captioner: causal, its loss is the per-token cross-entropy, it learns, it round-trips."""
from __future__ import annotations

import pytest
import torch

from bench.components.captioner import (EOT, SOT, Captioner, CaptionerConfig, CaptionerTrainArgs, bpe_tokenize,
                                        load_captioner, save_captioner, train_captioner)


def tiny(captions):
    vocab = sorted(set(bpe_tokenize(captions, 16).flatten().tolist()) - {0} | {SOT, EOT})
    torch.manual_seed(0)
    return Captioner(CaptionerConfig(vocab, input_size=16, grid=2, width=32, layers=1, heads=2, max_tokens=16)).eval()


def test_caption_loss_is_mean_token_cross_entropy_and_causal():
    captions = ["a red circle", "a blue square in the top left"]
    model = tiny(captions[:1])  # "blue square ..." words are outside its vocabulary: <unknown>, left out
    images = torch.randint(0, 256, (2, 3, 20, 20), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    loss = model.caption_loss(images, captions)
    ids, mask = model.tokenize(captions)
    for b in range(2):
        total, known = 0.0, 0
        for t in range(int(mask[b].sum())):  # tokens after SOT, EOT included
            # feed only the prefix up to t: a causal model gives the same next-token distribution
            prefix = ids[b:b + 1, : t + 2]
            if int(prefix[0, t + 1]) == model.unknown:
                continue
            with torch.no_grad():
                logits = model.next_token_logits(images[b:b + 1], prefix)[0, t].double()
            total += -float(torch.log_softmax(logits, -1)[prefix[0, t + 1]])
            known += 1
        assert float(loss[b]) == pytest.approx(total / known, rel=1e-5)
    unknown, scored = model.unknown_tokens(captions)
    assert unknown[0] == 0 and scored[0] == 4  # "a red circle" + EOT
    assert unknown[1] == 6 and scored[1] == 8  # blue, square, in, the, top, left: unknown; a, EOT: known


@pytest.mark.slow
def test_training_lowers_the_loss_and_files_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    colours = {"red": (220, 40, 40), "blue": (40, 40, 220)}
    images, captions = [], []
    for i in range(64):
        name = "red" if i % 2 else "blue"
        img = torch.full((3, 16, 16), 20, dtype=torch.uint8)
        img[:, 4:12, 4:12] = torch.tensor(colours[name], dtype=torch.uint8)[:, None, None]
        images.append(img)
        captions.append(f"a {name} square")
    images = torch.stack(images)
    args = CaptionerTrainArgs(steps=60, batch_size=32, lr=3e-3, width=32, layers=1, heads=2, input_size=16, max_tokens=8)
    model = train_captioner(images, captions, args)
    right = model.caption_loss(images[:8], captions[:8])
    swapped = model.caption_loss(images[:8], [captions[i + 1] if i % 2 == 0 else captions[i - 1] for i in range(8)])
    assert float(right.mean()) < 0.3  # learned the captions
    assert float(right.mean()) < float(swapped.mean()) - 1.0  # and reads the colour off the image
    save_captioner(model, str(tmp_path / "cap"))
    again = load_captioner(str(tmp_path / "cap"))
    torch.testing.assert_close(again.caption_loss(images[:8], captions[:8]), right)
    del g


def test_tokenize_drops_the_padding_past_the_longest_caption_and_no_logit_changes():
    captions = ["a red circle", "a blue square in the top left"]
    model = tiny(captions)
    ids, mask = model.tokenize(captions)
    longest = len(bpe_tokenize(captions[1:], 16)[0].nonzero())  # SOT .. EOT of the longer caption
    assert ids.shape[1] == longest < model.config.max_tokens and mask.shape == (2, longest - 1)
    assert mask[1].all() and int(mask[0].sum()) == len(bpe_tokenize(captions[:1], 16)[0].nonzero()) - 1
    # the whole max_tokens window, padded as the tokenizer pads (id 0 -> <unknown>)
    padded = torch.cat([ids, model.lut[0].expand(2, model.config.max_tokens - longest)], 1)
    images = torch.randint(0, 256, (2, 3, 16, 16), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    with torch.no_grad():
        short, full = model.next_token_logits(images, ids), model.next_token_logits(images, padded)
    torch.testing.assert_close(short, full[:, : longest - 1], rtol=1e-5, atol=1e-5)


def test_captioner_trains_for_10_steps():
    images = torch.randint(0, 256, (8, 3, 16, 16), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    captions = ["a red square", "a blue circle"] * 4
    args = CaptionerTrainArgs(steps=10, batch_size=4, width=32, layers=1, heads=2, input_size=16, max_tokens=8)
    model = train_captioner(images, captions, args)
    loss = model.caption_loss(images[:2], captions[:2])
    assert loss.shape == (2,) and bool(torch.isfinite(loss).all())
