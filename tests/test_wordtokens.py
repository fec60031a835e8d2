"""Word-to-token sets on three kinds of tokenizer built offline."""

from __future__ import annotations

import tempfile

import pytest
import tiny
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

import tl_multilingual as tlm
from tl_multilingual.inputs.wordtokens import token_bytes

TEXTS = ["the cat sleeps on the mat", "le chat dort sur le tapis", "猫在睡觉", "кошка спит", "flower 花 fleur"] * 20
WORDS = ["cat", "chat", "tapis", "猫", "кошка", "花", "flower", "dog", "犬"]


def saved(tok: Tokenizer) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    folder = tempfile.mkdtemp()
    fast.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def sentencepiece_style():
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    specials = ["<unk>", "<s>", "</s>", "<pad>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=330, special_tokens=specials, show_progress=False))
    return saved(tok)


def character_level():
    chars = sorted(set("".join(TEXTS) + "dog犬"))
    vocab = {c: i + 4 for i, c in enumerate(chars)}
    vocab.update({"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    return saved(tok)


TOKENIZERS = {
    "sentencepiece": sentencepiece_style,
    "byte-level": tiny.tokenizer,
    "character": character_level,
}


@pytest.fixture(scope="module", params=sorted(TOKENIZERS))
def tokenizer(request):
    return request.param, TOKENIZERS[request.param]()


def test_the_first_token_of_the_word_is_in_the_set(tokenizer):
    """Whether the word starts the text or follows a space, the first token holding part
    of it is in its set."""
    kind, tok = tokenizer
    raw = token_bytes(tok)
    for word in WORDS:
        found = set(tlm.word_tokens(tok, word))
        for text in (word, " " + word, "a " + word):
            enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
            start = text.index(word)
            first = next(
                i for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"])
                if b > start and raw.get(i, b"x").strip()
            )
            assert first in found, (kind, word, text, tok.convert_ids_to_tokens(enc["input_ids"]))


def test_every_member_is_a_prefix_of_the_word(tokenizer):
    kind, tok = tokenizer
    raw = token_bytes(tok)
    for word in WORDS:
        target = word.encode()
        for index in tlm.word_tokens(tok, word):
            piece = raw[index]
            piece = piece[1:] if piece.startswith(b" ") else piece
            assert piece and target.startswith(piece), (kind, word, tok.convert_ids_to_tokens([index]))


def test_known_members(tokenizer):
    kind, tok = tokenizer
    vocab = tok.get_vocab()
    if kind == "sentencepiece":
        assert vocab["<0xE7>"] in tlm.word_tokens(tok, "猫")  # byte fallback: 猫 is E7 8C AB
        assert vocab["▁cat"] in tlm.word_tokens(tok, "cat")  # the whole word, with its marker
        assert vocab["▁tap"] in tlm.word_tokens(tok, "tapis")
        assert vocab["▁c"] in tlm.word_tokens(tok, "cat")
        assert vocab["▁cat"] not in tlm.word_tokens(tok, "chat")
    elif kind == "byte-level":
        assert vocab["c"] in tlm.word_tokens(tok, "cat")
        assert vocab["ç"] in tlm.word_tokens(tok, "猫")  # the byte E7 in GPT-2's alphabet
        assert vocab["cat"] in tlm.word_tokens(tok, "cat")  # without the word-start marker
        assert vocab["Ġmat"] in tlm.word_tokens(tok, "matin")  # with it
        assert vocab["Ġch"] in tlm.word_tokens(tok, "chat") and vocab["Ġch"] not in tlm.word_tokens(tok, "cat")
        assert vocab["Ġmar"] not in tlm.word_tokens(tok, "mat")
    else:
        assert tlm.word_tokens(tok, "cat") == [vocab["c"]]
        assert tlm.word_tokens(tok, "猫") == [vocab["猫"]]
    assert vocab["<s>"] not in tlm.word_tokens(tok, "<s>")  # special tokens never count


def test_several_spellings_are_united():
    tok = tiny.tokenizer()
    assert set(tlm.word_tokens(tok, ["cat", "Cat"])) == set(tlm.word_tokens(tok, "cat")) | set(tlm.word_tokens(tok, "Cat"))
