"""Loading released denoiser weights: layouts, key renames and strict key checks.

Layouts read here (`read_checkpoint` / `from_pretrained` pick by what they find):

* diffusers style (v1.3 as released; v1.5 as written by `osp convert dit --to diffusers`): a `transformer/`
  folder (or its parent) with `config.json` and `diffusion_pytorch_model.safetensors`, or shards listed in
  `diffusion_pytorch_model.safetensors.index.json`.
* v1.5, MindSpeed-MM / PKU: `model_ema.pt` (`{"ema_state_dict": sd}` or a plain state dict, `module.` prefixes
  allowed), a `model_optim_rng.pt` (`{"model": sd}`) or a .safetensors file. PKU key names (`to_q`,
  `add_q_proj`, ...) are renamed to the MindSpeed-MM ones.
* Megatron folders (`latest_checkpointed_iteration.txt`, `mp_rank_XX[_YYY]/`) of either version at any TP x PP
  (x VPP), merged by `mindspeed_mm.osp.convert.megatron`.
The model family (v1.3 / v1.5) is told by the key names.

Checkpoints trained with TP > 1 in the PKU branch carry unused text-stream weights for the last block
(`attn1.to_add_out`, `norm2.norm_enc`, `ff_enc`); they are dropped with a logged note. Any other unexpected or
missing key is an error that names the keys.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import re
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

logger = logging.getLogger(__name__)

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"
PathLike = Union[str, os.PathLike]


# ------------------------------------------------------------------------------------------------ presets
def read_preset(name: str) -> dict:
    """Official config kwargs of a preset in mindspeed_mm/osp/configs (name with or without .json)."""
    path = PRESET_DIR / (name if name.endswith(".json") else f"{name}.json")
    if not path.is_file():
        available = sorted(p.stem for p in PRESET_DIR.glob("*.json"))
        raise FileNotFoundError(f"no preset {name!r} in {PRESET_DIR}; available: {available}")
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------------ key checks
def _listing(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_keys(expected: dict, state_dict: dict, what: str = "model") -> None:
    """Raise naming the missing / unexpected keys and shape mismatches of `state_dict` against `expected`
    (a state dict of the model, under the names the checkpoint uses)."""
    missing = set(expected) - set(state_dict)
    unexpected = set(state_dict) - set(expected)
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
    bad_shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if bad_shapes:
        problems.append(f"shape mismatches ({len(bad_shapes)}): " + "; ".join(bad_shapes[:12]))
    if problems:
        raise ValueError(f"{what}: the checkpoint does not match the model config: " + " | ".join(problems)
                         + ". Check that the config (preset or config.json) belongs to this checkpoint.")


def load_checked(model: nn.Module, state_dict: dict, what: str = "model",
                 dtype: Optional[torch.dtype] = None) -> None:
    """Strictly load `state_dict` into `model`. A model on the meta device takes the tensors themselves
    (cast to `dtype`, default the model's), so no second copy of the weights is made."""
    check_keys(model.state_dict(), state_dict, what)
    on_meta = any(p.is_meta for p in model.parameters())
    if on_meta:
        dtype_of = {k: dtype or v.dtype for k, v in model.state_dict().items()}
        state_dict = {k: v.to(dtype_of[k]) if v.is_floating_point() else v for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=on_meta)


# ------------------------------------------------------------------------------------------------ v1.5 names
# PKU (Open-Sora-Plan mindspeed_mmdit branch) -> MindSpeed-MM attention names, applied as substring renames
# in this order (spec: MindSpeed-MM opensoraplan_converter, v1.5).
PKU_TO_MM = (
    ("attn1.norm_q.", "attn1.norm_proj_q."), ("attn1.norm_k.", "attn1.norm_proj_k."),
    ("attn1.norm_added_q.", "attn1.norm_added_proj_q."), ("attn1.norm_added_k.", "attn1.norm_added_proj_k."),
    ("attn1.to_q.", "attn1.proj_q."), ("attn1.to_k.", "attn1.proj_k."), ("attn1.to_v.", "attn1.proj_v."),
    ("attn1.add_q_proj.", "attn1.added_proj_q."), ("attn1.add_k_proj.", "attn1.added_proj_k."),
    ("attn1.add_v_proj.", "attn1.added_proj_v."),
    ("attn1.to_out.0.", "attn1.proj_out."), ("attn1.to_add_out.", "attn1.added_proj_out."),
)
_PKU_MARKERS = ("attn1.to_q.", "attn1.add_q_proj.", "attn1.to_out.0.", "attn1.norm_q.")


def rename_pku_v15(state_dict: dict) -> dict:
    """PKU-branch v1.5 key names -> MindSpeed-MM names (no-op for MindSpeed-MM names)."""
    out = {}
    for key, value in state_dict.items():
        for old, new in PKU_TO_MM:
            key = key.replace(old, new)
        out[key] = value
    return out


def to_pku_v15(state_dict: dict) -> dict:
    """MindSpeed-MM v1.5 key names -> PKU-branch names (the inverse of `rename_pku_v15`)."""
    out = {}
    for key, value in state_dict.items():
        for old, new in PKU_TO_MM:
            key = key.replace(new, old)
        out[key] = value
    return out


def is_pku_v15(state_dict: dict) -> bool:
    return any(marker in key for key in state_dict for marker in _PKU_MARKERS)


def strip_prefix(state_dict: dict, prefix: str = "module.") -> dict:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def drop_tp_leftovers(state_dict: dict, num_layers: list[int]) -> dict:
    """Drop the last block's text-stream weights that PKU TP>1 training builds but no model uses."""
    last = f"transformer_blocks.{len(num_layers) - 1}.{num_layers[-1] - 1}."
    unused = tuple(last + name for name in ("attn1.added_proj_out.", "norm2.norm_enc.", "ff_enc."))
    dropped = [k for k in state_dict if k.startswith(unused)]
    if dropped:
        logger.info("note: dropping %d unused last-block text-stream weights left by tensor-parallel training "
                    "(%s); the model never reads them", len(dropped), _listing(dropped, 6))
    return {k: v for k, v in state_dict.items() if k not in set(dropped)}


_SUV_OFFICIAL = re.compile(r"^transformer_blocks\.(\d+)\.(\d+)\.(.*)$")
_SUV_FLAT = re.compile(r"^transformer_blocks\.(\d+)\.(.*)$")


def suv_official_to_flat(state_dict: dict, num_layers: list[int]) -> dict:
    """`transformer_blocks.{stage}.{j}.*` -> `transformer_blocks.{flat index}.*`."""
    starts = [sum(num_layers[:s]) for s in range(len(num_layers))]
    out = {}
    for key, value in state_dict.items():
        m = _SUV_OFFICIAL.match(key)
        if m:
            stage, j = int(m.group(1)), int(m.group(2))
            if stage >= len(num_layers) or j >= num_layers[stage]:
                raise ValueError(f"unexpected key {key!r}: block ({stage}, {j}) is outside num_layers {num_layers}")
            key = f"transformer_blocks.{starts[stage] + j}.{m.group(3)}"
        out[key] = value
    return out


def suv_flat_to_official(state_dict: dict, num_layers: list[int]) -> dict:
    """Inverse of `suv_official_to_flat`."""
    where = [(s, j) for s, n in enumerate(num_layers) for j in range(n)]
    out = {}
    for key, value in state_dict.items():
        m = _SUV_FLAT.match(key)
        if m:
            s, j = where[int(m.group(1))]
            key = f"transformer_blocks.{s}.{j}.{m.group(2)}"
        out[key] = value
    return out


# ------------------------------------------------------------------------------------------------ files
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
NOT_A_CHECKPOINT = "not a checkpoint (neither safetensors nor a torch checkpoint)"


class UntrustedPickleError(ValueError):
    """A real torch pickle that holds Python objects besides tensors; only a full (unsafe) unpickle reads it.
    Commands catch it to say what to do in their own terms (`fix` is the library-level advice)."""

    def __init__(self, path: Path, detail: str, fix: str = "if you trust the file, pass trust_pickle=True "
                                                           "(CLI: --trust-pickle)"):
        self.path, self.detail = Path(path), detail
        super().__init__(self.describe(fix))

    def describe(self, fix: str) -> str:
        return (f"problem: {self.path} holds Python objects besides tensors (e.g. Megatron `args`, RNG states: "
                f"{self.detail}), which the safe loader refuses; fix: {fix}")


def _safetensors_header_ok(path: Path, size: int) -> bool:
    """The 8-byte length + JSON header of a safetensors file, with every tensor's bytes inside the file."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return False
        n = int.from_bytes(head, "little")
        if n < 2 or 8 + n > size:
            return False
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return False
    if not isinstance(header, dict):
        return False
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            return False
        end = max(end, offsets[1])
    return 8 + n + end <= size


def checkpoint_kind(path: PathLike) -> Optional[str]:
    """"safetensors", "torch-zip" or "torch-pickle" by the file's bytes (not its name); None when it is none of
    them. Reads the header only."""
    import zipfile
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:4] == b"PK\x03\x04":
        return "torch-zip" if zipfile.is_zipfile(path) else None
    if len(magic) >= 2 and magic[0] == 0x80 and 2 <= magic[1] <= 5:  # pickle protocol 2-5 (legacy torch.save)
        return "torch-pickle"
    return "safetensors" if _safetensors_header_ok(path, size) else None


def check_checkpoint_file(path: PathLike, what: str = "") -> str:
    """Before reading: the file exists and is a safetensors or torch checkpoint. Returns its kind."""
    path = Path(path)
    label = f"{what}: " if what else ""
    if not path.exists():
        raise FileNotFoundError(f"problem: {label}{path} does not exist; fix: check the path")
    if not path.is_file():
        raise ValueError(f"problem: {label}{path} is not a file; fix: pass the checkpoint file")
    kind = checkpoint_kind(path)
    if kind is None:
        raise ValueError(f"problem: {label}{path} is {NOT_A_CHECKPOINT}; fix: pass the weights file itself "
                         "(re-download it if it is truncated or damaged)")
    return kind


def check_checkpoint_path(path: PathLike, what: str = "") -> None:
    """Before reading: `path` exists; a file, or a folder's top-level weights files, are real checkpoints."""
    path = Path(path)
    if path.is_dir():
        for f in sorted(path.iterdir()):
            if f.is_file() and f.suffix in CHECKPOINT_SUFFIXES:
                check_checkpoint_file(f, what)
    else:
        check_checkpoint_file(path, what)


def untrusted_pickle(path: PathLike, err: BaseException) -> Optional[UntrustedPickleError]:
    """An `UntrustedPickleError` when `err` is torch's weights-only unpickler refusing non-tensor objects (not a
    damaged file); else None."""
    message = str(err)
    if not (isinstance(err, pickle.UnpicklingError) and
            any(s in message for s in ("GLOBAL", "allowlisted", "add_safe_globals", "unrecognized function",
                                       "Unsupported class"))):
        return None
    detail = message.split("Unsupported global: ")[-1].splitlines()[0]
    return UntrustedPickleError(path, re.sub(r" (was not an allowed global|whose module).*", "", detail)[:200])


def load_tensor_file(path: PathLike, trust_pickle: bool = False) -> dict:
    """A .safetensors file, or a torch pickle. Pickles load with weights_only=True unless `trust_pickle`
    (Megatron training checkpoints also hold `args` and RNG states, which only a full unpickle reads).
    A missing file, a file that is no checkpoint, a damaged one and a pickle needing trust are told apart."""
    path = Path(path)
    kind = check_checkpoint_file(path)
    if kind == "safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as err:  # SafetensorError is not a ValueError
            raise ValueError(f"problem: {path} is a damaged safetensors file ({str(err).splitlines()[0]}); "
                             "fix: re-download or re-export it") from None
    try:
        return torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        refused = None if trust_pickle else untrusted_pickle(path, err)
        if refused is not None:
            raise refused from None
        raise ValueError(f"problem: {path} is a damaged torch checkpoint ({str(err).splitlines()[0][:200]}); "
                         "fix: re-download or re-export it") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"problem: {path} is a damaged torch checkpoint ({str(err).splitlines()[0][:200]}); "
                         "fix: re-download or re-export it") from None


def read_diffusers_folder(path: PathLike) -> tuple[dict, dict]:
    """(config, state_dict) of a diffusers model folder (`transformer/` or the pipeline folder above it)."""
    path = Path(path)
    if not (path / "config.json").is_file() and (path / "transformer" / "config.json").is_file():
        path = path / "transformer"
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} has no config.json (expected a diffusers `transformer/` folder)")
    config = json.loads(config_file.read_text())
    index = sorted(path.glob("*.safetensors.index.json"))
    if index:
        weight_map = json.loads(index[0].read_text())["weight_map"]
        state_dict = {}
        for shard in sorted(set(weight_map.values())):
            shard_sd = load_tensor_file(path / shard)
            state_dict.update({k: v for k, v in shard_sd.items() if k in weight_map})
        missing = set(weight_map) - set(state_dict)
        if missing:
            raise ValueError(f"{index[0]} lists tensors absent from their shards: {_listing(missing)}")
        return config, state_dict
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    if len(files) != 1:
        raise FileNotFoundError(f"{path}: expected one weights file (or a *.safetensors.index.json), "
                                f"found {[f.name for f in files]}")
    return config, load_tensor_file(files[0])


def diffusers_config(model) -> dict:
    """What a diffusers config.json holds for `model`: its official kwargs and `_class_name`."""
    config = dict(model.config.to_official())
    config.setdefault("_class_name", "SparseUMMDiT" if type(model).__name__ == "SUVDiT" else type(model).__name__)
    return config


DIFFUSERS_WEIGHTS_PATTERN = "diffusion_pytorch_model{suffix}.safetensors"


def write_diffusers_folder(config: dict, state_dict: dict, folder: PathLike, max_shard_size="5GB",
                           overwrite: bool = False) -> Path:
    """Write a diffusers model folder atomically: config.json (with `_class_name`) and
    diffusion_pytorch_model[-0000X-of-0000N].safetensors (+ .index.json when sharded), via huggingface_hub."""
    from mindspeed_mm.osp.files import check_target, replace_dir
    try:
        import huggingface_hub  # noqa: F401  (the shard split of write_safetensors_shards)
    except ImportError:
        raise ImportError("writing diffusers folders needs huggingface_hub: pip install 'mindspeed-mm-osp[convert]'")\
            from None
    if "_class_name" not in config:
        raise ValueError("config needs `_class_name` (OpenSoraT2V_v1_3, OpenSoraInpaint_v1_3 or SparseUMMDiT)")
    folder = Path(folder)
    check_target(folder, overwrite)

    def write(tmp: Path) -> None:
        write_safetensors_shards(state_dict, tmp, DIFFUSERS_WEIGHTS_PATTERN, max_shard_size)
        (tmp / "config.json").write_text(json.dumps(config, indent=1) + "\n")

    replace_dir(folder, write)
    return folder


def write_safetensors_shards(state_dict: dict, folder: Path, filename_pattern: str, max_shard_size="5GB") -> int:
    """Write `state_dict` as safetensors shards of at most `max_shard_size` (huggingface_hub's split and file names:
    `filename_pattern` with `{suffix}` = "" or -0000X-of-0000N, plus `<name>.index.json` when sharded), one file at a
    time under a progress bar. Tensors that share memory are copied apart, so every key is stored. Returns the
    number of weights files."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    from mindspeed_mm.osp.progress import bar

    tensors, seen = {}, set()
    for name, value in state_dict.items():
        value = value.detach().cpu().contiguous()
        key = (value.untyped_storage().data_ptr(), value.untyped_storage().nbytes()) if value.numel() else None
        if key is not None and key in seen:
            value = value.clone()
        elif key is not None:
            seen.add(key)
        tensors[name] = value
    split = split_torch_state_dict_into_shards(tensors, filename_pattern=filename_pattern,
                                               max_shard_size=max_shard_size)
    files = split.filename_to_tensors
    for filename, names in bar(files.items(), total=len(files), desc="writing shards", unit="file"):
        save_file({n: tensors[n] for n in names}, str(Path(folder) / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": dict(split.metadata), "weight_map": split.tensor_to_filename}
        (Path(folder) / (filename_pattern.format(suffix="") + ".index.json")).write_text(json.dumps(index, indent=2))
    return len(files)


def read_mindspeed_checkpoint(path: PathLike, trust_pickle: bool = False, ema: bool = False) -> dict:
    """State dict of a checkpoint file (model_ema.pt, model_optim_rng.pt, .safetensors) or of a folder holding
    model_ema.pt / model.pt or a Megatron checkpoint (merged from any TP x PP; `ema`: its "ema_model")."""
    from mindspeed_mm.osp.convert.megatron import is_megatron_folder, read_megatron
    path = Path(path)
    if path.is_dir():
        candidates = [path / "model_ema.pt", path / "model.pt"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None and is_megatron_folder(path):
            return read_megatron(path, ema=ema, trust_pickle=trust_pickle)[1]
        if found is None:
            raise FileNotFoundError(f"{path}: no model_ema.pt, model.pt, config.json or Megatron mp_rank_* folders")
        path = found
    obj = load_tensor_file(path, trust_pickle)
    if isinstance(obj, dict):
        for key in ("ema_state_dict", "model", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if isinstance(obj, dict):
        obj = {k: v for k, v in obj.items() if "_extra_state" not in k}  # Megatron/TE extra states
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: no state dict found (looked for ema_state_dict / model / a plain dict of tensors)")
    return strip_prefix(obj)


def read_checkpoint(path: PathLike, *, version: Optional[str] = None, ema: bool = False,
                    trust_pickle: bool = False) -> tuple[str, dict, Optional[dict]]:
    """(version "v13"/"v15", state dict under the official names, the folder's config.json or None) of any
    supported source: a diffusers `transformer/` folder (sharded or not; or its weights file), a v1.5
    `model_ema.pt` / `.pt` / `.safetensors`, a Megatron folder of either version at any TP x PP x VPP
    (`ema`: its "ema_model" weights), or an `osp train` run / checkpoint (`ema`: its EMA weights). `version` must agree with the key names, and decides when they do not tell."""
    from mindspeed_mm.osp.convert.megatron import detect_version, is_megatron_folder, read_megatron, \
        to_official_names
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"problem: {path} does not exist; fix: check the path")
    if path.is_file() and path.suffix == ".safetensors" and (path.parent / "config.json").is_file():
        path = path.parent
    if path.is_dir() and _is_training_checkpoint(path):
        from mindspeed_mm.osp.training.export import read_training_checkpoint
        found, state_dict, config = read_training_checkpoint(path, ema=ema)
        if version is not None and version != found:
            raise ValueError(f"{path} is a {found} training checkpoint, not {version}")
        return found, state_dict, config
    if path.is_dir() and ((path / "config.json").is_file() or (path / "transformer" / "config.json").is_file()):
        config, state_dict = read_diffusers_folder(path)
    elif is_megatron_folder(path):
        return (*read_megatron(path, ema=ema, trust_pickle=trust_pickle, version=version), None)
    else:
        config, state_dict = None, read_mindspeed_checkpoint(path, trust_pickle, ema)
    version = detect_version(list(state_dict), str(path), version)
    return version, to_official_names(state_dict, version), config


def _is_training_checkpoint(path: Path) -> bool:
    from mindspeed_mm.osp.training.export import is_training_checkpoint
    return is_training_checkpoint(path)


def from_pretrained(path: PathLike, config: Optional[Union[dict, str, PathLike]] = None, *,
                    dtype: torch.dtype = torch.float32, device: Union[str, torch.device] = "cpu",
                    trust_pickle: bool = False, ema: bool = False) -> nn.Module:
    """Load a denoiser from any source `read_checkpoint` reads. `config` = official kwargs (dict, JSON path or
    preset name; default: the folder's config.json, else preset `osp15_suv_8b` for v1.5; required for a v1.3
    checkpoint without one)."""
    from mindspeed_mm.osp.dit.osp13 import OSP13DiT
    from mindspeed_mm.osp.dit.suv import SUVDiT

    version, state_dict, official_config = read_checkpoint(path, ema=ema, trust_pickle=trust_pickle)
    if config is not None:
        official_config = read_config(config)
    if official_config is None:
        if version == "v13":
            raise ValueError(f"{path} is a v1.3 checkpoint without config.json: pass its config (config=... / "
                             "--transformer-config: a config.json or a preset such as osp13_t2v_2b)")
        official_config = read_config("osp15_suv_8b")
    cls = OSP13DiT if version == "v13" else SUVDiT
    return cls.from_official(official_config, state_dict, dtype=dtype, device=device)


def read_config(config: Union[dict, str, PathLike]) -> dict:
    """Official kwargs from a dict, a JSON file (MindSpeed-MM model JSON: its "predictor") or a preset name."""
    if isinstance(config, dict):
        return config
    p = Path(config)
    if p.is_file():
        data = json.loads(p.read_text())
        # MindSpeed-MM model json keeps the denoiser kwargs under "predictor".
        return data.get("predictor", data)
    return read_preset(str(config))
