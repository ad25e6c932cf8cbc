"""Tests for ep.studies.finetune on a tiny random Gemma 3 (no embedded model needed), and loading it by name."""

import json

import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

import ep
from ep.studies.finetune import Recipe, collate, encode_pairs, lora_finetune, response_loss

WORDS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "user", "model", "\n",
         "what", "is", "red", "blue", "a", "colour", "the", "sky", "?", "."]


def _tiny(seed=0):
    torch.manual_seed(seed)
    config = Gemma3TextConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, pad_token_id=0,
                              eos_token_id=1, bos_token_id=2, layer_types=["sliding_attention", "full_attention"],
                              initializer_range=0.2)  # large enough for a 32-wide model to learn in 30 steps
    return Gemma3ForCausalLM(config).eval()


def _tokenizer():
    vocab = {w: i for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(" "), behavior="removed"),
                                                 pre_tokenizers.Split(Regex(r"\n|[^\w\s]"), behavior="isolated")])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", additional_special_tokens=["<start_of_turn>", "<end_of_turn>"])


def test_collate_targets_only_the_answer_and_end_of_turn():
    ids, mask, rows, cols = collate([([2, 9, 10], [11, 12, 5, 8]), ([2, 9], [13, 5, 8])], pad_id=0)
    assert ids.tolist() == [[2, 9, 10, 11, 12, 5, 8], [2, 9, 13, 5, 8, 0, 0]]
    assert mask.sum(1).tolist() == [7, 5]
    assert ids[rows, cols + 1].tolist() == [11, 12, 5, 13, 5]  # answer + <end_of_turn>, not the "\n"
    assert cols.tolist() == [2, 3, 4, 1, 2]


def test_encode_pairs_splits_prompt_and_answer():
    tok = _tokenizer()
    (prompt, answer), = encode_pairs(tok, [("what is red ?", "a colour .")])
    assert tok.convert_ids_to_tokens(prompt)[:2] == ["<bos>", "<start_of_turn>"]
    assert tok.convert_ids_to_tokens(prompt)[-2:] == ["model", "\n"]
    assert tok.convert_ids_to_tokens(answer) == ["a", "colour", ".", "<end_of_turn>", "\n"]


def test_response_loss_equals_full_logits_loss():
    model = _tiny()
    ids, mask, rows, cols = collate([([2, 9, 10], [11, 12, 5, 8]), ([2, 9], [13, 5, 8])], pad_id=0)
    logits = model(input_ids=ids, attention_mask=mask).logits
    full = torch.nn.functional.cross_entropy(logits[rows, cols], ids[rows, cols + 1])
    assert torch.allclose(response_loss(model, ids, mask, rows, cols), full, atol=1e-5)


def test_lora_fits_and_merges():
    model, reference = _tiny(), _tiny()
    examples = [([2, 4, 6, 8, 9, 10, 11, 17, 5, 8, 4, 7, 8], [13, 14, 18, 5, 8]),
                ([2, 4, 6, 8, 9, 10, 15, 16, 17, 5, 8, 4, 7, 8], [12, 18, 5, 8])]
    recipe = Recipe(rank=4, alpha=8, lr=2e-2, warmup=1, batch_size=2, steps=30)
    merged, losses = lora_finetune(model, examples, recipe, pad_id=0, progress=False)
    assert len(losses) == 30 and losses[-1] < 0.3 * losses[0]
    assert type(merged) is Gemma3ForCausalLM and not any("lora" in n for n, _ in merged.named_parameters())
    changed = [n for n, p in merged.named_parameters() if not torch.equal(p, reference.get_parameter(n))]
    assert changed and all(n.endswith(("proj.weight",)) for n in changed)
    with torch.no_grad():
        assert float(response_loss(merged, *collate(examples, 0))) < 0.3 * losses[0]


def test_load_model_finds_a_checkpoint_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EP_CACHE_DIR", str(tmp_path))
    _tiny().save_pretrained(tmp_path / "tiny-it")
    _tokenizer().save_pretrained(tmp_path / "tiny-it")
    model, info = ep.load_model("tiny-it", device="cpu")
    assert (info.name, info.n_layers, info.d_model) == ("tiny-it", 2, 32)
    assert ep.model.loading._cached_checkpoint("google/gemma-2-2b") is None  # hub ids still go to the hub


def test_cached_sibling_is_reused_without_training(tmp_path, monkeypatch):
    monkeypatch.setenv("EP_CACHE_DIR", str(tmp_path))
    out = tmp_path / "toy-it-lora"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"")
    recipe = Recipe(base="toy")
    log = {"recipe": json.loads(json.dumps(recipe.__dict__)), "pairs": [["q", "a"]], "losses": [2.0, 1.0],
           "seconds": {"total": 1.0}}
    (out / "training.json").write_text(json.dumps(log))
    sibling = ep.studies.finetune.instruct_sibling("toy", progress=False)  # would fail to load "toy" if it trained
    assert sibling.cached and sibling.name == "toy-it-lora" and sibling.recipe == recipe and sibling.losses == [2, 1]
