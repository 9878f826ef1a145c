"""A word-level text tokenizer trained in code, so tests and the shapes world get a real tokenizer offline."""

from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ..models.hydra.processing_hydra import BOI_TOKEN, EOI_TOKEN, IMAGE_TOKEN


PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
BOS_TOKEN = "<bos>"
EOS_TOKEN = "<eos>"
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
# Words of the default chat template that a corpus may lack, yet every chat prompt contains.
CHAT_ROLES = ("system", "user", "assistant")


def train_word_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 1000,
    min_frequency: int = 1,
    extra_special_tokens: Sequence[str] = (),
) -> PreTrainedTokenizerFast:
    """
    Trains a lowercasing word-level tokenizer (words and runs of punctuation) on `texts`.

    The special tokens come first, with ids in this order: pad, unk, bos, eos, `<|im_start|>`, `<|im_end|>`, the
    image tokens `<image>`, `<begin_of_image>`, `<end_of_image>` (named `image_token`, `boi_token`, `eoi_token`, as
    [`HydraProcessor`] expects), then `extra_special_tokens`. Words outside the `vocab_size` most frequent ones map
    to `<unk>`; the chat roles are always in the vocabulary (beyond `vocab_size` if need be). No token is added
    automatically when encoding (Qwen-style): append `eos_token` yourself for language-model pre-training.
    """
    special_tokens = [
        PAD_TOKEN,
        UNK_TOKEN,
        BOS_TOKEN,
        EOS_TOKEN,
        *CHAT_TOKENS,
        IMAGE_TOKEN,
        BOI_TOKEN,
        EOI_TOKEN,
        *extra_special_tokens,
    ]
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK_TOKEN))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special_tokens
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    vocab = tokenizer.get_vocab()
    for role in CHAT_ROLES:
        vocab.setdefault(role, len(vocab))
    tokenizer.model = models.WordLevel(vocab, unk_token=UNK_TOKEN)

    fast_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        extra_special_tokens={"image_token": IMAGE_TOKEN, "boi_token": BOI_TOKEN, "eoi_token": EOI_TOKEN},
    )
    fast_tokenizer.add_special_tokens(
        {"extra_special_tokens": [*CHAT_TOKENS, *extra_special_tokens]}, replace_extra_special_tokens=False
    )
    return fast_tokenizer


__all__ = ["train_word_tokenizer"]
