"""Tests for ep.model.chat: one source per chat format; it agrees with Gemma's own template and with transformers."""

import jinja2
import pytest
from transformers import PreTrainedTokenizerFast

from ep.model.chat import CHAT_TEMPLATE, chat_prompt, chat_prompts

# Reference: the text branch of the chat template shipped in google/gemma-3-*-it's tokenizer_config.json.
GEMMA3_IT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = \"\" -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}"
)


def test_chat_prompt_is_the_gemma_turn_format():
    assert chat_prompt(" Hi ") == "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    assert chat_prompt("Hi", "Hello.") == chat_prompt("Hi") + "Hello.<end_of_turn>\n"


def _tokenizer(template):
    from tokenizers import Tokenizer, models

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
                                  bos_token="<bos>", unk_token="<unk>")
    tok.chat_template = template
    return tok


@pytest.mark.parametrize("response", [None, "Hello.", "  Hello, with spaces.\n"])
@pytest.mark.parametrize("template", [CHAT_TEMPLATE, GEMMA3_IT_TEMPLATE], ids=["ours", "gemma-3-it"])
def test_chat_prompt_is_what_transformers_renders_from_the_gemma_template(response, template):
    """The one format in this package (CHAT_TEMPLATE) writes what Gemma 3's template writes, untrimmed input included,
    and chat_prompt renders it as transformers renders a tokenizer's template."""
    messages = [{"role": "user", "content": " What is red? "}]
    if response is not None:
        messages.append({"role": "assistant", "content": response})
    hf = _tokenizer(template).apply_chat_template(messages, tokenize=False, add_generation_prompt=response is None)
    assert hf == "<bos>" + chat_prompt(" What is red? ", response)
    assert chat_prompt(" What is red? ", response, _tokenizer(template)) == chat_prompt(" What is red? ", response)


def test_chat_prompt_uses_the_tokenizers_own_template_when_it_has_one():
    tok = _tokenizer("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}:{{ m['content'] }}]{% endfor %}"
                     "{% if add_generation_prompt %}>{% endif %}")
    assert chat_prompt("a", tokenizer=tok) == "[user:a]>"  # BOS dropped: the tokenizer adds it
    assert chat_prompt("a", "b", tok) == "[user:a][assistant:b]"


class _Templated:
    chat_template = "{% for m in messages %}[{{ m['role'] }}:{{ m['content'] }}]{% endfor %}"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert not tokenize and add_generation_prompt
        return jinja2.Environment().from_string(self.chat_template).render(messages=messages) + ">"


def test_chat_prompts_uses_the_tokenizers_template_and_optional_system():
    assert chat_prompts(_Templated(), ["a", "b"]) == ["[user:a]>", "[user:b]>"]
    assert chat_prompts(_Templated(), ["a"], system="s") == ["[system:s][user:a]>"]


def test_chat_prompts_needs_a_template():
    class Base:
        chat_template = None

    with pytest.raises(ValueError, match="no chat template"):
        chat_prompts(Base(), ["hi"])
