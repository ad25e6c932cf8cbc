"""Chat formats: wrapping instructions (and replies) as chat turns.

Two ways, one module, so no other file spells a template out:

- :func:`chat_prompts` uses the tokenizer's own chat template (instruction-tuned models such as
  Qwen2.5-Instruct or Gemma-2-2B-it ship one);
- :func:`chat_prompt` writes Gemma's turn markup directly. Base Gemma has no chat template, but its
  tokenizer knows the turn tokens, and this is exactly the text Gemma-2/3-it's template produces (minus
  BOS, which the tokenizer adds). :data:`CHAT_TEMPLATE` is the same format as a Jinja template, saved
  with the LoRA sibling's tokenizer (``ep.studies.finetune``).
"""

from __future__ import annotations

from collections.abc import Sequence

END_OF_TURN = "<end_of_turn>"
# The Gemma chat format (Gemma 2 and 3 share it), as a Jinja template for a saved tokenizer.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def chat_prompt(instruction: str, response: str | None = None) -> str:
    """One user turn in the Gemma chat format, then the model turn (open, or closed around ``response``).

    No BOS: the tokenizer adds it, as it does for every text the extractors read.
    """
    text = f"<start_of_turn>user\n{instruction.strip()}{END_OF_TURN}\n<start_of_turn>model\n"
    return text if response is None else f"{text}{response}{END_OF_TURN}\n"


def chat_prompts(tokenizer, instructions: Sequence[str], system: str | None = None) -> list[str]:
    """Each instruction as one user turn in the model's chat template, ready for the assistant's reply.

    ``system=None`` keeps the template's own default (Qwen's adds "You are Qwen, ..."; Gemma's has
    none). The text holds the template's special tokens (BOS included where the template has one):
    tokenize it with ``add_special_tokens=False``.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("this tokenizer has no chat template: use an instruction-tuned model")
    head = [{"role": "system", "content": system}] if system is not None else []
    return [tokenizer.apply_chat_template(head + [{"role": "user", "content": text}], tokenize=False,
                                          add_generation_prompt=True) for text in instructions]
