"""Chat formats: wrapping instructions (and replies) as chat turns.

One source of truth per format, and no other file spells a template out:

- a tokenizer that ships a chat template (instruction-tuned models such as Qwen2.5-Instruct or
  Gemma-2-2B-it) is used through it: :func:`chat_prompts`, and :func:`chat_prompt` given the tokenizer;
- base Gemma has no chat template, but its tokenizer knows the turn tokens. :data:`CHAT_TEMPLATE` is the
  Gemma-2/3-it format as a Jinja template (the tests check it writes what Gemma 3's own template writes);
  :func:`chat_prompt` renders it exactly as transformers renders a tokenizer's template, and it is saved
  with the LoRA sibling's tokenizer (``ep.studies.finetune``), so the sibling's template and the text it
  was trained on cannot drift apart.
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


def _render(template: str, messages: list[dict], add_generation_prompt: bool) -> str:
    """A chat template rendered as ``transformers`` renders one (sandboxed Jinja, trim and lstrip blocks), no BOS."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                            bos_token="", eos_token="")


def chat_prompt(instruction: str, response: str | None = None, tokenizer=None) -> str:
    """One user turn, then the model turn: open (ready for the reply), or closed around ``response``.

    The format is ``tokenizer``'s own chat template when it has one, else :data:`CHAT_TEMPLATE` (Gemma's).
    No BOS: the tokenizer adds it, as it does for every text the extractors read.

    >>> chat_prompt(" What is red? ")
    '<start_of_turn>user\\nWhat is red?<end_of_turn>\\n<start_of_turn>model\\n'
    """
    messages = [{"role": "user", "content": instruction}]
    if response is not None:
        messages.append({"role": "assistant", "content": response})
    if not getattr(tokenizer, "chat_template", None):
        return _render(CHAT_TEMPLATE, messages, add_generation_prompt=response is None)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=response is None)
    bos = tokenizer.bos_token
    return text[len(bos):] if bos and text.startswith(bos) else text


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
