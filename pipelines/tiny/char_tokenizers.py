"""Character-level tokenizers built locally for the random-weight tiny pipelines (no download).

Each lower-cased ASCII letter, digit and punctuation mark is one token; any other character is
``<unk>``, so every prompt gets its own token ids and any text is accepted. The Llama one
starts every sequence with ``<s>``, as the real Llama tokenizer does.

Not supported: real vocabularies (these only exist so diffusers' text-encoder code paths run),
sub-word merges, saving a tokenizer to share it.
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["clip_tokenizer", "llama_tokenizer", "t5_tokenizer"]

_CHARS = string.ascii_lowercase + string.digits + " .,;:!?'\"-()/&"


def _char_tokenizer(specials: list[str], add_bos: bool = False, **special_kw: str) -> Any:
    """A ``PreTrainedTokenizerFast`` with one token per (lower-cased) character; ``add_bos``
    prepends ``special_kw["bos_token"]`` to every sequence, as Llama's tokenizer does."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*specials, *_CHARS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    if add_bos:
        bos = special_kw["bos_token"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0",
            pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
            special_tokens=[(bos, vocab[bos])],
        )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", **special_kw)


def llama_tokenizer() -> Any:
    """For the tiny Llama text encoder of ``tiny-hunyuan`` (bos 0, pad 1, eos 2, unk 3).

    Every sequence starts with ``<s>`` like the real Llama tokenizer's, so an empty prompt
    still has one valid token (HunyuanVideo's token refiner averages over the valid ones)."""
    return _char_tokenizer(
        ["<s>", "<pad>", "</s>", "<unk>"],
        add_bos=True,
        bos_token="<s>",
        pad_token="<pad>",
        eos_token="</s>",
    )


def t5_tokenizer() -> Any:
    """For the tiny UMT5 text encoder of ``tiny-wan`` (pad 0, eos 1, unk 2)."""
    return _char_tokenizer(["<pad>", "</s>", "<unk>"], pad_token="<pad>", eos_token="</s>")


def clip_tokenizer() -> Any:
    """``CLIPTokenizer`` from a temporary letters-only vocab and an empty merges file."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for suffix in ("", "</w>"):
        for c in string.ascii_lowercase:
            vocab[c + suffix] = len(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
        return CLIPTokenizer(
            str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), pad_token="!"
        )
