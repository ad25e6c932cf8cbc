"""Tests for ep.model.chat: the Gemma turn format written directly and as a Jinja template agree."""

import jinja2
import pytest

from ep.model.chat import CHAT_TEMPLATE, chat_prompt, chat_prompts


def test_chat_prompt_is_the_gemma_turn_format():
    assert chat_prompt(" Hi ") == "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    assert chat_prompt("Hi", "Hello.") == chat_prompt("Hi") + "Hello.<end_of_turn>\n"


@pytest.mark.parametrize("response", [None, "Hello."])
def test_the_jinja_template_writes_the_same_text(response):
    messages = [{"role": "user", "content": " What is red? "}]
    if response is not None:
        messages.append({"role": "assistant", "content": response})
    text = jinja2.Environment().from_string(CHAT_TEMPLATE).render(
        messages=messages, bos_token="<bos>", add_generation_prompt=response is None)
    assert text == "<bos>" + chat_prompt("What is red?", response)


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
