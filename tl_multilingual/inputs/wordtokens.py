"""Which vocabulary tokens can start a word, for any tokenizer.

The logit lens of Wendler et al. scores a word in a language by the summed
probability of every token that is a prefix of the word, with or without the
tokenizer's word-start marker. Tokens are compared as bytes, so the rule is the same
for SentencePiece (``▁`` marker, byte-fallback tokens ``<0xE8>``), byte-level BPE
(``Ġ`` marker, tokens holding parts of a UTF-8 character) and plain character
vocabularies: a token counts when its bytes, less a leading space, are a non-empty
prefix of the word's UTF-8 bytes.
"""

from __future__ import annotations

import json
import re
import weakref
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

__all__ = ["word_tokens", "token_bytes"]

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_INDEX: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in for each byte (``Ġ`` is the space), inverted."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    found = [decoder] + list(decoder.get("decoders", []))
    return any(d.get("type") == "ByteLevel" for d in found if isinstance(d, dict))


def token_bytes(tokenizer: Any) -> dict[int, bytes]:
    """The bytes each non-special token stands for (a word-start marker as a space)."""
    byte_level = _byte_level_alphabet() if _is_byte_level(tokenizer) else None
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    out: dict[int, bytes] = {}
    for token, index in tokenizer.get_vocab().items():
        if index in special:
            continue
        match = _BYTE_TOKEN.fullmatch(token)
        if match:
            out[index] = bytes([int(match.group(1), 16)])
        elif byte_level is not None and all(c in byte_level for c in token):
            out[index] = bytes(byte_level[c] for c in token)
        else:
            out[index] = token.replace("▁", " ").encode("utf-8")
    return out


def _index(tokenizer: Any) -> dict[bytes, list[int]]:
    try:
        return _INDEX[tokenizer]
    except (KeyError, TypeError):
        pass
    index: dict[bytes, list[int]] = defaultdict(list)
    for token, raw in token_bytes(tokenizer).items():
        index[raw].append(token)
    try:
        _INDEX[tokenizer] = index
    except TypeError:  # not weak-referenceable: recomputed next time
        pass
    return index


def word_tokens(tokenizer: Any, word: str | Iterable[str]) -> list[int]:
    """Sorted ids of every token that can start ``word`` (or any of several spellings):
    its bytes, after an optional leading space (the word-start marker), are a non-empty
    prefix of the word's UTF-8 bytes."""
    words = [word] if isinstance(word, str) else list(word)
    index = _index(tokenizer)
    found: set[int] = set()
    for spelling in words:
        raw = spelling.strip().encode("utf-8")
        for k in range(1, len(raw) + 1):
            found.update(index.get(raw[:k], ()))
            found.update(index.get(b" " + raw[:k], ()))
    return sorted(found)
