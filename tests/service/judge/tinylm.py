"""A tiny random Llama and a word-level tokenizer with a chat template: a judge to export in
seconds, with nothing downloaded."""

from __future__ import annotations

from pathlib import Path

from surety_serving.export.judge import DEFAULT_USER_TEMPLATE, sample_rows

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny judge<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ("[UNK]", "<|im_start|>", "<|im_end|>")
EXTRA_WORDS = "Score : system user assistant You are a tiny judge . , 1 2 3 4 5 Rate how"


def tokenizer_words() -> list[str]:
    """Every word the tests' prompts use (others become [UNK])."""
    texts = [DEFAULT_USER_TEMPLATE, EXTRA_WORDS]
    texts += [value for row in sample_rows(("a", "b")) for value in row.values()]
    words: list[str] = []
    for text in texts:
        for word in _pre_tokenize(text):
            if word not in words:
                words.append(word)
    return words


def _pre_tokenize(text: str) -> list[str]:
    from tokenizers.pre_tokenizers import Whitespace

    return [piece for piece, _ in Whitespace().pre_tokenize_str(text)]


def build_tokenizer(directory: Path) -> object:
    """A transformers fast tokenizer (word level, whitespace split) saved in ``directory``."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate([*SPECIAL, *tokenizer_words()])}
    backend = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    backend.add_special_tokens(list(SPECIAL))
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend,
        unk_token="[UNK]",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def build_tiny_llama(directory: Path, *, layers: int = 2, seed: int = 0) -> Path:
    """A random 2-layer Llama (hidden 32) and its tokenizer in ``directory``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(directory)
    config = LlamaConfig(
        vocab_size=len(tokenizer),  # type: ignore[arg-type]
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        # Larger than Llama's 0.02, so the layers' logits differ by more than rounding.
        initializer_range=0.3,
        tie_word_embeddings=False,
        pad_token_id=2,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(str(directory))
    return directory
