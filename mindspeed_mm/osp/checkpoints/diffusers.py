"""Diffusers model folders: `config.json` (official kwargs + `_class_name`) and
`diffusion_pytorch_model.safetensors`, or `-0000X-of-0000N` shards listed in
`diffusion_pytorch_model.safetensors.index.json`; and safetensors shards in general (huggingface_hub's split)."""
from __future__ import annotations

import json
from pathlib import Path

from mindspeed_mm.osp.checkpoints.keys import listing
from mindspeed_mm.osp.checkpoints.tensors import PathLike, load_tensor_file

DIFFUSERS_WEIGHTS_PATTERN = "diffusion_pytorch_model{suffix}.safetensors"


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
            raise ValueError(f"{index[0]} lists tensors absent from their shards: {listing(missing)}")
        return config, state_dict
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    if len(files) != 1:
        raise FileNotFoundError(f"{path}: expected one weights file (or a *.safetensors.index.json), "
                                f"found {[f.name for f in files]}")
    return config, load_tensor_file(files[0])


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

