"""PyTorch safetensors <-> MindSpore `.ckpt`, and strict loading of either into a MindSpore Cell.

Our MindSpore models (e.g. `mindspeed_mm.osp.vae_ms.WFVAE`) use the PyTorch parameter names, so for them the
name map is the identity. Cells built from MindSpore's legacy norms (`nn.LayerNorm`, `nn.GroupNorm`,
`nn.BatchNorm*`) call their affine parameters `gamma`/`beta` where torch says `weight`/`bias`;
`map_names_to_net` resolves exactly those differences against the target Cell and nothing else.
Values are copied bit for bit (bf16 included: files are read through MindSpore, not numpy).
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Iterable, Mapping, Optional, Tuple

_LEGACY = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


def _ms():
    try:
        import mindspore
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("MindSpore is needed for .ckpt conversion: pip install 'mindspeed-mm-osp[mindspore]'") from e
    return mindspore


def read_safetensors(path: str) -> Dict[str, "mindspore.Tensor"]:
    """name -> mindspore.Tensor from a (torch-written) safetensors file, dtypes kept (bf16 too)."""
    ms = _ms()
    params = ms.load_checkpoint(path, format="safetensors")
    return {k: ms.Tensor(v) for k, v in params.items()}


def read_ckpt(path: str) -> Dict[str, "mindspore.Tensor"]:
    ms = _ms()
    return {k: ms.Tensor(v) for k, v in ms.load_checkpoint(path).items()}


def _refuse_existing(path: str, overwrite: bool) -> None:
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"problem: {path} exists; fix: choose a new output path or pass --overwrite "
                              "(overwrite=True) to replace it")


def _atomic_save(tensors: Mapping[str, "mindspore.Tensor"], path: str, fmt: str, overwrite: bool) -> None:
    _refuse_existing(path, overwrite)
    ms = _ms()
    from mindspeed_mm.osp.files import replace_file

    replace_file(path, lambda tmp: ms.save_checkpoint([{"name": k, "data": v} for k, v in tensors.items()], tmp,
                                                      format=fmt),
                 suffix=".ckpt" if fmt == "ckpt" else ".safetensors")  # MindSpore appends a missing suffix


def map_names_to_net(names: Iterable[str], net_param_names: Iterable[str]) -> Dict[str, str]:
    """Map file names onto a Cell's parameter names: identical names stay; `x.weight`/`x.bias` (torch) match
    `x.gamma`/`x.beta` (legacy MindSpore norms) and back. Names with no counterpart map to themselves."""
    net = set(net_param_names)
    mapping = {}
    for name in names:
        target = name
        if name not in net:
            head, _, leaf = name.rpartition(".")
            for torch_leaf, ms_leaf in _LEGACY.items():
                for a, b in ((torch_leaf, ms_leaf), (ms_leaf, torch_leaf)):
                    if leaf == a and f"{head}.{b}" in net:
                        target = f"{head}.{b}"
        mapping[name] = target
    return mapping


def safetensors_to_ckpt(src: str, dst: str, net=None, overwrite: bool = False) -> Dict[str, str]:
    """Convert a torch safetensors file to a MindSpore `.ckpt`; names mapped onto `net`'s when a Cell is given.
    Returns the name map used."""
    _refuse_existing(dst, overwrite)  # before reading
    tensors = read_safetensors(src)
    mapping = (map_names_to_net(tensors, [p.name for p in net.get_parameters()]) if net is not None
               else {k: k for k in tensors})
    _atomic_save({mapping[k]: v for k, v in tensors.items()}, dst, "ckpt", overwrite)
    return mapping


def ckpt_to_safetensors(src: str, dst: str, torch_names: Optional[Iterable[str]] = None,
                        overwrite: bool = False) -> Dict[str, str]:
    """Convert a MindSpore `.ckpt` to safetensors; with `torch_names` (the torch model's keys) legacy
    gamma/beta names are mapped back. Returns the name map used."""
    _refuse_existing(dst, overwrite)  # before reading
    tensors = read_ckpt(src)
    mapping = map_names_to_net(tensors, torch_names) if torch_names is not None else {k: k for k in tensors}
    _atomic_save({mapping[k]: v for k, v in tensors.items()}, dst, "safetensors", overwrite)
    return mapping


def load_into_net(net, path: str, ignore: Optional[Callable[[str], bool]] = None) -> None:
    """Load a `.ckpt` or `.safetensors` file into `net` strictly: names mapped (gamma/beta), shapes checked by
    `load_param_into_net(strict_load=True)`, and any parameter not loaded or file entry not used raises.
    `ignore(name)` drops file entries the Cell deliberately lacks (e.g. WF-VAE's fixed Haar filters)."""
    ms = _ms()
    tensors = read_safetensors(path) if path.endswith(".safetensors") else read_ckpt(path)
    if ignore is not None:
        tensors = {k: v for k, v in tensors.items() if not ignore(k)}
    names = [p.name for p in net.get_parameters()]
    mapping = map_names_to_net(tensors, names)
    params = {}
    for k, v in tensors.items():
        params[mapping[k]] = ms.Parameter(v, name=mapping[k])
    not_loaded, unused = ms.load_param_into_net(net, params, strict_load=True)
    missing = sorted(set(not_loaded) | (set(names) - set(params)))
    unexpected = sorted(set(unused) | (set(params) - set(names)))
    if missing or unexpected:
        raise ValueError(f"{path} does not match {type(net).__name__}: missing {missing[:8]}"
                         f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
                         f"{' ...' if len(unexpected) > 8 else ''}")


def wfvae_to_ckpt(pretrained_dir: str, dst: str, overwrite: bool = False) -> Tuple[str, str]:
    """Our WF-VAE folder (`config.json` + `model.safetensors`) -> `dst` folder with `config.json` + `model.ckpt`
    for the MindSpore model (names identical; Haar filters, if present, dropped: the model builds them).
    An existing non-empty `dst` is refused unless `overwrite`."""
    import shutil
    from pathlib import Path

    from mindspeed_mm.osp.files import check_target, replace_file
    from mindspeed_mm.osp.vae.official import is_fixed_filter_key

    check_target(Path(dst), overwrite)  # before reading anything

    tensors = {k: v for k, v in read_safetensors(os.path.join(pretrained_dir, "model.safetensors")).items()
               if not is_fixed_filter_key(k)}
    os.makedirs(dst, exist_ok=True)
    ckpt = os.path.join(dst, "model.ckpt")
    _atomic_save(tensors, ckpt, "ckpt", overwrite)
    cfg = os.path.join(dst, "config.json")
    if os.path.abspath(cfg) != os.path.abspath(os.path.join(pretrained_dir, "config.json")):
        replace_file(cfg, lambda tmp: shutil.copyfile(os.path.join(pretrained_dir, "config.json"), tmp))
    return cfg, ckpt
