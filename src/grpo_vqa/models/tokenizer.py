"""Byte-level BPE tokenizers trained on task text, wrapped as the real tokenizer class of each architecture."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE
from transformers import GPT2Tokenizer, PreTrainedTokenizerBase, Qwen2Tokenizer
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

ARCHS = ("qwen2_5_vl", "idefics3")

#: Reasoning-format markers; single tokens but NOT special, so ``skip_special_tokens=True`` keeps them.
REASONING_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")

#: Special tokens of each architecture's chat/vision format (ids 0.. in this order).
SPECIAL_TOKENS: dict[str, tuple[str, ...]] = {
    "qwen2_5_vl": (
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ),
    "idefics3": (
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<fake_token_around_image>",
        "<image>",
        "<end_of_utterance>",
        "<global-img>",
        *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)),
    ),
}

#: Role tokens as the real checkpoints set them (Qwen2.5-VL-Instruct / SmolVLM-Instruct).
ROLE_TOKENS: dict[str, dict[str, str | None]] = {
    "qwen2_5_vl": {"bos": None, "eos": "<|im_end|>", "pad": "<|endoftext|>", "unk": None},
    "idefics3": {
        "bos": "<|im_start|>",
        "eos": "<end_of_utterance>",
        "pad": "<|im_end|>",
        "unk": "<|endoftext|>",
    },
}

MODEL_MAX_LENGTH = 4096


def check_arch(arch: str) -> str:
    """Return ``arch`` if supported, else raise ValueError."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")
    return arch


def _backend(arch: str) -> Tokenizer:
    """An untrained BPE pipeline identical to the one the arch's tokenizer class builds on load."""
    tok = Tokenizer(BPE(continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    if arch == "qwen2_5_vl":
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(corpus: Iterable[str], vocab_size: int, arch: str) -> PreTrainedTokenizerBase:
    """Train a byte-level BPE on ``corpus`` and wrap it as the arch's tokenizer class.

    ``vocab_size`` counts specials and the 256-symbol byte alphabet (it is an upper bound: a small corpus may
    yield fewer merges). Specials get ids ``0..``, followed by the reasoning tokens. Deterministic.
    """
    check_arch(arch)
    specials = list(SPECIAL_TOKENS[arch])
    reserved = specials + list(REASONING_TOKENS)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(reserved) + len(alphabet):
        raise ValueError(
            f"vocab_size {vocab_size} < {len(reserved) + len(alphabet)} (specials + byte alphabet)"
        )
    backend = _backend(arch)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in reserved],
        initial_alphabet=sorted(alphabet),
    )
    backend.train_from_iterator((str(t) for t in corpus), trainer=trainer)
    vocab = backend.get_vocab(with_added_tokens=False)
    vocab = dict(sorted(vocab.items(), key=lambda kv: kv[1]))
    merges = [tuple(m) for m in _merges(backend)]

    roles = ROLE_TOKENS[arch]
    common = dict(
        vocab=vocab, merges=merges, model_max_length=MODEL_MAX_LENGTH, clean_up_tokenization_spaces=False
    )
    if arch == "qwen2_5_vl":
        tok = Qwen2Tokenizer(
            **common,
            bos_token=None,
            eos_token=roles["eos"],
            pad_token=roles["pad"],
            unk_token=None,
            errors="replace",
        )
    else:
        tok = GPT2Tokenizer(
            **common,
            bos_token=roles["bos"],
            eos_token=roles["eos"],
            pad_token=roles["pad"],
            unk_token=roles["unk"],
            add_bos_token=False,
        )
    extra = [t for t in specials if t not in {v for v in roles.values() if v}]
    tok.add_special_tokens(
        {"extra_special_tokens": [AddedToken(t, special=True, normalized=False) for t in extra]},
        replace_extra_special_tokens=True,
    )
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in REASONING_TOKENS])
    for t in reserved:  # every reserved token must keep the id the trainer gave it (one token each)
        if tok.convert_tokens_to_ids(t) != vocab[t]:
            raise RuntimeError(f"token {t!r} did not keep its id")
    return tok


def _merges(backend: Tokenizer) -> list[list[str]]:
    """Merges of a trained BPE backend, in rank order."""
    import json

    model = json.loads(backend.to_str())["model"]
    return [m.split(" ") if isinstance(m, str) else list(m) for m in model["merges"]]
