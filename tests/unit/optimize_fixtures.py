"""Tiny random-initialised checkpoints for the optimizer's fast tests (built here, no downloads)."""

from __future__ import annotations

import string
from pathlib import Path

LLAMA_CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)


def _char_vocab(specials: list[str]) -> dict[str, int]:
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in string.printable:
        vocab.setdefault(ch, len(vocab))
    return vocab


def tiny_llama(path: Path, *, chat_template: bool = True, seed: int = 0) -> Path:
    """A 2-layer Llama (hidden 64) with a character-level tokenizer and a chat template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = _char_vocab(["<unk>", "<s>", "</s>"])
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    if chat_template:
        tokenizer.chat_template = LLAMA_CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_bert(path: Path, *, labels: int = 0, seed: int = 0, sentence_transformers: bool = False) -> Path:
    """A 2-layer BERT (hidden 32) with a word-piece vocabulary; `labels` > 0: a classifier."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

    words = [
        "the",
        "a",
        "of",
        "and",
        "to",
        "in",
        "is",
        "was",
        "for",
        "on",
        "with",
        "that",
        "as",
        "it",
        "by",
        "at",
        "from",
        "this",
        "be",
        "are",
        "or",
        "an",
    ]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *string.ascii_lowercase]
    vocab += [f"##{c}" for c in string.ascii_lowercase] + list(".,?!'\"-0123456789")
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(path / "vocab.txt"))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=128,
        num_labels=max(labels, 2),
        id2label={i: f"label-{i}" for i in range(max(labels, 2))},
        label2id={f"label-{i}": i for i in range(max(labels, 2))},
    )
    model = BertForSequenceClassification(config) if labels else BertModel(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    if sentence_transformers:
        (path / "modules.json").write_text(
            '[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},'
            '{"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},'
            '{"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]'
        )
        (path / "1_Pooling").mkdir(exist_ok=True)
        (path / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
        (path / "sentence_bert_config.json").write_text('{"max_seq_length": 64}')
    return path
