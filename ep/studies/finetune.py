"""An instruction-tuned sibling of a base model, made offline by a brief LoRA finetune.

Cross-checkpoint matching (notebook 05) needs a base model and an instruction-tuned version of the
*same* model. At paper scale that is ``google/gemma-2-2b`` and ``google/gemma-2-2b-it``; offline no
such pair ships, so we make one from the embedded base model, honestly and cheaply:

1. **Answers** (:func:`few_shot_answers`, through ``ep.model.generation.greedy`` like every generation
   in the package): the base model answers nothing in chat format, but
   few-shot prompted ("Instruction: ... / Answer: ...", three hand-written examples) it gives
   plausible one-line answers to harmless instructions. These are its own answers: the finetune
   teaches the chat format and when to stop, not new knowledge.
2. **LoRA** (:func:`lora_finetune`, peft): rank-16 adapters on every attention and MLP projection,
   trained on ``<start_of_turn>user ... <end_of_turn> <start_of_turn>model {answer}<end_of_turn>``
   with the loss on the answer and its ``<end_of_turn>`` only. The LM head (262k wide for Gemma 3)
   is the expensive part of a step, so it is applied only at those positions.
3. **Merge and cache** (:func:`instruct_sibling`): the adapters are merged into a float checkpoint
   saved atomically under ``ep.model.loading.cache_dir() / name`` with a chat template, so
   ``ep.load_model(name)`` loads it exactly like the base. A rerun with the same recipe reuses it.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..method.files import one_maker, staged_dir
from ..model.chat import CHAT_TEMPLATE, END_OF_TURN, chat_prompt
from ..model.generation import greedy
from ..model.loading import cache_dir, load_model, transformers_model

FEW_SHOT = (
    ("Name the three primary colours.", "Red, yellow and blue."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Explain why the sky is blue.",
     "Sunlight is scattered by the air, and blue light is scattered the most, so the sky looks blue."),
)


@dataclass(frozen=True)
class Recipe:
    """Everything the sibling depends on (stored beside the checkpoint; a different recipe rebuilds it)."""

    base: str = "gemma-3-270m"
    n_pairs: int = 32  # few-shot answers to the first harmless_train instructions
    max_new_tokens: int = 40
    rank: int = 16
    alpha: int = 32
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    lr: float = 5e-4
    warmup: int = 3
    batch_size: int = 8
    steps: int = 20
    seed: int = 0


@dataclass
class Sibling:
    """A made instruction-tuned model: its name for ``ep.load_model`` and how it was trained."""

    name: str
    path: Path
    recipe: Recipe
    pairs: list[tuple[str, str]]  # (instruction, answer) training pairs
    losses: list[float]  # training loss per step
    seconds: dict = field(default_factory=dict)  # answers / training / total wall-clock
    cached: bool = False  # loaded from the cache rather than trained now


# -----------------------------------------------------------------------------
# 1. answers from the base model itself

def few_shot_answers(model, instructions: list[str], max_new_tokens: int = 40,
                     batch_size: int = 32) -> list[tuple[str, str]]:
    """Greedy few-shot answers of an nnsight-wrapped base model, cut at the first newline.

    Unfinished or repetitive answers are dropped.
    """
    tokenizer = model.tokenizer
    head = "".join(f"Instruction: {q}\nAnswer: {a}\n\n" for q, a in FEW_SHOT)
    newline_ids = {i for s in ("\n", "\n\n") for i in tokenizer.encode(s, add_special_tokens=False)}
    stop = [tokenizer.eos_token_id, *sorted(newline_ids)]
    prompts = [f"{head}Instruction: {q.strip()}\nAnswer:" for q in instructions]
    out = greedy(model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, stop=stop,
                 add_special_tokens=True, progress=False)
    pairs = []
    for q, ids in zip(instructions, out.tokens):
        finished = any(i in stop for i in ids)
        answer = tokenizer.decode(ids, skip_special_tokens=True).split("\n")[0].strip()
        words = answer.lower().split()
        if finished and len(words) >= 2 and len(set(words)) >= 0.5 * len(words):
            pairs.append((q.strip(), answer))
    return pairs


# -----------------------------------------------------------------------------
# 2. LoRA on the response tokens only

def encode_pairs(tokenizer, pairs: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """(instruction, answer) -> (prompt ids with BOS, answer ids + <end_of_turn> + newline).

    The two parts are tokenized separately, exactly as at generation time (prompt, then new tokens).
    """
    return [(tokenizer(chat_prompt(q))["input_ids"],
             tokenizer(f"{a}{END_OF_TURN}\n", add_special_tokens=False)["input_ids"]) for q, a in pairs]


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded batch -> (input_ids [B, T], attention_mask [B, T], rows [M], cols [M]).

    (rows, cols) index the positions whose *next* token is a target: every answer token and the
    <end_of_turn> after it (the trailing newline is not trained on).
    """
    seqs = [p + r for p, r in examples]
    T = max(map(len, seqs))
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    rows, cols = [], []
    for b, ((p, r), s) in enumerate(zip(examples, seqs)):
        ids[b, :len(s)], mask[b, :len(s)] = torch.tensor(s), 1
        targets = range(len(p), len(p) + len(r) - 1)  # answer + <end_of_turn>, not the final "\n"
        rows += [b] * len(targets)
        cols += [t - 1 for t in targets]  # the position that predicts token t
    return ids, mask, torch.tensor(rows), torch.tensor(cols)


def response_loss(hf_model, ids, mask, rows, cols) -> torch.Tensor:
    """Mean cross-entropy on the target tokens, with the LM head applied at those positions only."""
    hidden = hf_model.model(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, T, d]
    logits = hf_model.get_output_embeddings()(hidden[rows, cols])  # [M, vocab]
    cap = getattr(hf_model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return torch.nn.functional.cross_entropy(logits.float(), ids[rows, cols + 1])


def lora_finetune(hf_model, examples: list[tuple[list[int], list[int]]], recipe: Recipe, pad_id: int,
                  progress: bool = True):
    """Train LoRA adapters on tokenized (prompt, answer) examples; merge them in -> (model, losses per step).

    The returned model is ``hf_model`` itself with merged weights (peft edits it in place).
    """
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm

    config = LoraConfig(r=recipe.rank, lora_alpha=recipe.alpha, target_modules=list(recipe.target_modules),
                        lora_dropout=0.0, task_type="CAUSAL_LM")
    peft_model = get_peft_model(hf_model, config)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=recipe.lr)
    warmup = lambda step: min(1.0, (step + 1) / max(1, recipe.warmup))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, warmup)
    rng = random.Random(recipe.seed)
    order: list[int] = []
    losses = []
    with torch.enable_grad():  # notebooks turn autograd off globally (ep.setup)
        for _ in tqdm(range(recipe.steps), desc="LoRA", disable=not progress):
            while len(order) < recipe.batch_size:  # epochs of shuffled examples
                order += rng.sample(range(len(examples)), len(examples))
            batch, order = [examples[i] for i in order[:recipe.batch_size]], order[recipe.batch_size:]
            loss = response_loss(hf_model, *collate(batch, pad_id))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            scheduler.step()
            losses.append(float(loss.detach()))
    return peft_model.merge_and_unload(), losses


# -----------------------------------------------------------------------------
# 3. the cached sibling

def _read(path: Path) -> dict | None:
    try:
        return json.loads((path / "training.json").read_text())
    except (OSError, ValueError):
        return None


def _sibling(path: Path, log: dict, cached: bool) -> Sibling:
    recipe = Recipe(**{**log["recipe"], "target_modules": tuple(log["recipe"]["target_modules"])})
    return Sibling(name=path.name, path=path, recipe=recipe, pairs=[tuple(p) for p in log["pairs"]],
                   losses=log["losses"], seconds=log["seconds"], cached=cached)


def instruct_sibling(base: str = "gemma-3-270m", name: str | None = None, progress: bool = True,
                     **recipe) -> Sibling:
    """The instruction-tuned sibling of ``base`` (trained now, or reused from the cache).

    ``recipe`` overrides fields of :class:`Recipe`. The checkpoint lives in ``cache_dir() / name``
    (default ``{base}-it-lora``) and loads with ``ep.load_model(name)``.
    """
    spec = Recipe(base=base, **recipe)
    name = name or f"{base.replace('/', '--')}-it-lora"
    out = cache_dir() / name
    with one_maker(out):  # a second process training the same sibling waits, then finds it
        log = _read(out)
        if log is not None and log.get("recipe") == json.loads(json.dumps(asdict(spec))) \
                and (out / "model.safetensors").exists():
            return _sibling(out, log, cached=True)
        return _train_sibling(out, spec, progress)


def _train_sibling(out: Path, spec: Recipe, progress: bool) -> Sibling:
    """Train the sibling ``spec`` describes and save it at ``out`` whole."""
    from ..data import instructions

    start = time.perf_counter()
    torch.manual_seed(spec.seed)
    model, _ = load_model(spec.base, device="cpu", dtype=torch.float32)  # a fresh copy: peft edits it in place
    hf_model, tokenizer = transformers_model(model), model.tokenizer
    prompts = instructions("harmless_train")[:spec.n_pairs]
    pairs = few_shot_answers(model, prompts, spec.max_new_tokens)
    if len(pairs) < spec.batch_size:
        raise RuntimeError(f"only {len(pairs)} usable few-shot answers from {len(prompts)} prompts")
    answered = time.perf_counter()
    if progress:
        print(f"{len(pairs)}/{len(prompts)} few-shot answers in {answered - start:.0f} s; training LoRA...")
    merged, losses = lora_finetune(hf_model, encode_pairs(tokenizer, pairs), spec, tokenizer.pad_token_id, progress)
    trained = time.perf_counter()

    tokenizer.chat_template = CHAT_TEMPLATE
    merged.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(END_OF_TURN)]
    seconds = {"answers": answered - start, "training": trained - answered, "total": trained - start}
    log = {"recipe": asdict(spec), "pairs": pairs, "losses": losses, "seconds": seconds}
    with staged_dir(out) as staging:  # a crash leaves no half-written checkpoint under `name`
        merged.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "training.json").write_text(json.dumps(log, indent=1) + "\n")
    return _sibling(out, log, cached=False)


# -----------------------------------------------------------------------------
# before / after

def chat_generate(model, instructions: list[str], max_new_tokens: int = 40, batch_size: int = 32
                  ) -> list[tuple[str, bool]]:
    """Greedy replies of an nnsight-wrapped model to chat-formatted instructions -> [(reply, ended its turn)]."""
    tokenizer = model.tokenizer
    end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    out = greedy(model, [chat_prompt(q) for q in instructions], max_new_tokens=max_new_tokens,
                 batch_size=batch_size, stop=[tokenizer.eos_token_id, end], add_special_tokens=True, progress=False)
    replies = []
    for ids in out.tokens:
        ended = end in ids
        ids = ids[:ids.index(end)] if ended else ids
        replies.append((tokenizer.decode(ids, skip_special_tokens=True).strip(), ended))
    return replies
