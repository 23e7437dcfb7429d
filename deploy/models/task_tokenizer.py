"""A byte-level BPE tokenizer trained here on the tasks' own text, so their prompts tokenize compactly.

The corpus is what a policy reads and writes: prompts in every style, expert answers, wrong answers
and the environments' feedback turns, from expert episodes with revisions (the SFT demonstration
generator) of GeneralPoints, V-IRL and VisualQA in text mode. Digits are split one by one, which
keeps arithmetic learnable. The same corpus and settings give the same tokenizer every time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sftrl.models.chat_template import IM_END, IM_START, TEXT_CHAT_TEMPLATE

ENDOFTEXT = "<|endoftext|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, PAD)  # ids 0..3
VOCAB_SIZE = 4096  # an upper bound: the corpus's distinct words stop the merges earlier (~2k)

# (env id, options, episodes): every prompt style and the rule variants, several V-IRL cities.
_STYLES = ("default", "compact", "diverse")
CORPUS_SPECS: tuple[tuple[str, dict[str, Any], int], ...] = tuple(
    spec
    for style in _STYLES
    for spec in (
        ("sftrl/GeneralPoints-v0", {"prompt_style": style, "face_cards": "as_10"}, 100),
        ("sftrl/GeneralPoints-v0", {"prompt_style": style, "face_cards": "as_11_12_13", "suits": "red"}, 100),
        ("sftrl/VIRL-v0", {"prompt_style": style, "actions": "absolute", "city": "new_york"}, 20),
        ("sftrl/VIRL-v0", {"prompt_style": style, "actions": "relative", "city": "san_francisco"}, 20),
        ("sftrl/VIRL-v0", {"prompt_style": style, "actions": "absolute", "city": "london"}, 10),
        ("sftrl/VisualQA-v0", {"prompt_style": style, "mode": "text"}, 150),
    )
)


def task_corpus(seed: int = 0) -> Iterator[str]:
    """Every turn of expert episodes (half of them with a wrong first attempt and its feedback)."""
    from services.envs.demonstrations import generate_demonstrations

    for i, (env_id, options, episodes) in enumerate(CORPUS_SPECS):
        for demo in generate_demonstrations(env_id, options, episodes, seed + 10_000 * i, 0.5):
            for message in demo.messages:
                yield message["content"]


def train_tokenizer(texts: Sequence[str] | Iterator[str], vocab_size: int = VOCAB_SIZE) -> Any:
    """A ``tokenizers.Tokenizer``: byte-level BPE, digits split, the ChatML special tokens first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # any byte stays encodable
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def task_tokenizer(extra_special_tokens: Sequence[str] = (), seed: int = 0) -> Any:
    """The tasks' tokenizer as a transformers fast tokenizer with the ChatML template.

    No token is added around plain text (ChatML prompts carry their own ``<|im_start|>``).
    ``<|im_end|>`` is the end-of-sequence token (generation stops at the end of an assistant
    turn); padding has its own token so that it never hides a real end of turn.
    """
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(task_corpus(seed)),
        bos_token=IM_START,
        eos_token=IM_END,
        pad_token=PAD,
        unk_token=ENDOFTEXT,
        chat_template=TEXT_CHAT_TEMPLATE,
        model_max_length=8192,  # the models' max_position_embeddings
        clean_up_tokenization_spaces=False,
    )
    if extra_special_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": list(extra_special_tokens)})
    return tokenizer
