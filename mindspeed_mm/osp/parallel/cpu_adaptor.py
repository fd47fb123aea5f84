"""Run megatron-core on CPU (gloo), for tests and for debugging layouts without an accelerator.

megatron-core allocates on `torch.cuda.current_device()`, calls `torch.cuda.synchronize()`, keeps its RNG
tracker states with `torch.cuda.get_rng_state()`, enters `torch.autocast("cuda")` and writes `device="cuda"`
literals. This module redirects exactly those calls to the CPU, and nothing else:

* every already-imported `megatron.core.*` module that refers to `torch` gets a thin proxy of `torch` instead,
  whose `torch.cuda` answers `current_device()` with "cpu", makes `synchronize`/`empty_cache` no-ops and keeps
  RNG state in the CPU generator, whose factory functions map `device="cuda"` to the CPU, and whose
  `autocast("cuda")` becomes CPU autocast;
* `Tensor.cuda()` called from a megatron-core module (0.12 does) returns the tensor unchanged;
* `Tensor.type()` called with no argument *from a megatron-core module* reports CPU tensors under their CUDA
  names ("torch.cuda.FloatTensor"), which the optimizers check for; callers elsewhere see the usual answer;
* 0.12.x only: its distributed optimizer calls the FP8 shard quantiser unconditionally, which raises when
  Transformer Engine is absent; with no FP8 parameters it is skipped;
* megatron's CUDA RNG state helpers (`_get_cuda_rng_state`/`_set_cuda_rng_state`, whose names and signatures
  changed between 0.12 and 0.16) get CPU versions;
* the gradient norm and scaling of `optimizer.clip_grads` use torch's foreach ops instead of megatron's local
  fallbacks for apex/Transformer Engine (one `torch.norm` per parameter gathered through Python floats, one
  multiply-and-copy per parameter): the same sums, about 2x faster for the default model's 234 parameters, where
  they ran twice in every clipped step (benchmarks/cpu_train_overheads.py).

Torch itself is not touched, so other code in the process is unaffected. Apply it only when the device is the
CPU (`mindspeed_mm.osp.parallel.initialize` does); on CUDA megatron runs as is and on Ascend
`mindspeed.megatron_adaptor` takes this role. Supported megatron-core: 0.12.x and 0.16.x.
"""
from __future__ import annotations

import contextlib
import importlib
import sys
import types

import torch

from mindspeed_mm.osp.parallel.compat import megatron_version

SUPPORTED_MEGATRON = ((0, 12), (0, 16))

# Modules a DiT trainer reaches: process groups, TP layers and mappings, RNG, pipeline schedules, DDP,
# the distributed optimizer and dist checkpointing. Imported here so that they all get the proxy.
_MEGATRON_MODULES = (
    "megatron.core.parallel_state",
    "megatron.core.utils",
    "megatron.core.tensor_parallel.layers",
    "megatron.core.tensor_parallel.mappings",
    "megatron.core.tensor_parallel.random",
    "megatron.core.tensor_parallel.utils",
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.pipeline_parallel.p2p_communication",
    "megatron.core.distributed.distributed_data_parallel",
    "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.distributed.finalize_model_grads",
    "megatron.core.optimizer",
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.distrib_optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.optimizer.grad_scaler",
    "megatron.core.dist_checkpointing.serialization",
    "megatron.core.dist_checkpointing.strategies.torch",
    "megatron.core.dist_checkpointing.strategies.filesystem_async",
    "megatron.core.dist_checkpointing.exchange_utils",
    "megatron.core.dist_checkpointing.validation",
)

_FACTORIES = ("empty", "zeros", "ones", "full", "tensor", "arange", "rand", "randn", "empty_strided",
              "as_tensor")


def _cpu_device(device):
    if device is None:
        return None
    if isinstance(device, int):
        return torch.device("cpu")
    if isinstance(device, str) and device.startswith("cuda"):
        return torch.device("cpu")
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    return device


class _CpuCuda(types.SimpleNamespace):
    """What megatron-core asks of `torch.cuda`, answered by the CPU."""

    def __getattr__(self, name):
        return getattr(torch.cuda, name)


def _make_cuda_namespace() -> _CpuCuda:
    ns = _CpuCuda()
    ns.current_device = lambda: "cpu"
    ns.synchronize = lambda *a, **k: None
    ns.empty_cache = lambda: None
    ns.is_available = lambda: False
    ns.device_count = lambda: 0
    ns.set_device = lambda *a, **k: None
    ns.get_rng_state = lambda device=None: torch.get_rng_state()
    ns.set_rng_state = lambda state, device=None: torch.set_rng_state(state)
    ns.manual_seed = lambda seed: torch.manual_seed(seed)
    ns.manual_seed_all = lambda seed: torch.manual_seed(seed)
    ns.memory_allocated = lambda *a, **k: 0
    ns.max_memory_allocated = lambda *a, **k: 0
    ns.random = types.SimpleNamespace(get_rng_state=ns.get_rng_state, set_rng_state=ns.set_rng_state)
    ns.Stream = _NullStream
    ns.Event = _NullEvent
    ns.stream = lambda *a, **k: contextlib.nullcontext()
    ns.current_stream = lambda *a, **k: _NullStream()
    ns.default_stream = lambda *a, **k: _NullStream()
    ns.device = lambda *a, **k: contextlib.nullcontext()
    ns.nvtx = types.SimpleNamespace(range_push=lambda *a, **k: None, range_pop=lambda *a, **k: None)
    return ns


class _NullStream:
    def __init__(self, *a, **k):
        pass

    def wait_stream(self, *a, **k):
        pass

    def synchronize(self):
        pass

    def record_event(self, *a, **k):
        return _NullEvent()


class _NullEvent:
    def __init__(self, *a, **k):
        pass

    def record(self, *a, **k):
        pass

    def wait(self, *a, **k):
        pass

    def synchronize(self):
        pass

    def query(self):
        return True


class _CpuTorch(types.ModuleType):
    """`torch`, as seen by a megatron-core module running on the CPU."""

    def __init__(self):
        super().__init__("torch")
        self.cuda = _make_cuda_namespace()
        for name in _FACTORIES:
            setattr(self, name, self._on_cpu(getattr(torch, name)))
        self.device = self._device

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def _on_cpu(fn):
        def wrapper(*args, **kwargs):
            if "device" in kwargs:
                kwargs["device"] = _cpu_device(kwargs["device"])
            return fn(*args, **kwargs)
        wrapper.__name__ = fn.__name__
        return wrapper

    @staticmethod
    def _device(*args, **kwargs):
        if args and isinstance(args[0], str) and args[0].startswith("cuda"):
            return torch.device("cpu")
        return torch.device(*args, **kwargs)

    @staticmethod
    def autocast(device_type="cuda", *args, **kwargs):
        if device_type == "cuda":
            device_type = "cpu"
            if kwargs.get("dtype") == torch.float16:  # CPU autocast runs bf16; fp16 is not supported there
                kwargs["enabled"] = False
        return torch.autocast(device_type, *args, **kwargs)


_APPLIED: list[str] = []


def apply() -> list[str]:
    """Redirect megatron-core's CUDA calls to the CPU; returns the names of the patched modules. Idempotent."""
    if _APPLIED:
        return list(_APPLIED)
    version = megatron_version()
    if version[:2] not in SUPPORTED_MEGATRON:
        raise RuntimeError(f"megatron-core {'.'.join(map(str, version))} is not supported by the CPU adaptor; "
                           f"supported: {', '.join(f'{a}.{b}.x' for a, b in SUPPORTED_MEGATRON)}")
    proxy = _CpuTorch()
    for name in _MEGATRON_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:  # a module that this megatron-core version does not have
            continue
    for name, module in list(sys.modules.items()):
        if name.startswith("megatron.core") and getattr(module, "torch", None) is torch:
            module.torch = proxy
            _APPLIED.append(name)
    _patch_rng_helpers()
    _patch_tensor_methods()
    _patch_multi_tensor_fallbacks()
    if version[:2] == (0, 12):
        _patch_fp8_quantiser()
    return list(_APPLIED)


def _patch_tensor_methods() -> None:
    original = torch.Tensor.type

    def type_(self, dtype=None, non_blocking=False, **kwargs):
        if dtype is None and not kwargs:
            name = original(self)
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("megatron.core") and name.startswith("torch.") and not name.startswith("torch.cuda"):
                return "torch.cuda." + name[len("torch."):]
            return name
        return original(self, dtype, non_blocking, **kwargs)

    torch.Tensor.type = type_

    original_cuda = torch.Tensor.cuda

    def cuda(self, *args, **kwargs):
        if sys._getframe(1).f_globals.get("__name__", "").startswith("megatron.core"):
            return self
        return original_cuda(self, *args, **kwargs)

    torch.Tensor.cuda = cuda


def foreach_l2_norm(chunk_size, noop_flag, tensor_lists, per_tensor, *args):
    """megatron's `multi_tensor_l2norm` contract: the L2 norm over every tensor of tensor_lists[0], as a float32
    tensor of shape (1,), and no per-tensor norms."""
    tensors = tensor_lists[0]
    if not tensors:
        return torch.zeros(1), None
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)))
    return total.reshape(1).float(), None


def foreach_scale(chunk_size, noop_flag, tensor_lists, scale):
    """megatron's `multi_tensor_scale` contract: tensor_lists[1][i] = tensor_lists[0][i] * scale."""
    sources, targets = tensor_lists
    if not targets:
        return
    if all(s is t for s, t in zip(sources, targets)):
        torch._foreach_mul_(targets, scale)
    else:
        torch._foreach_copy_(targets, torch._foreach_mul(sources, scale))


def _patch_multi_tensor_fallbacks() -> None:
    from megatron.core import utils

    clip_grads = importlib.import_module("megatron.core.optimizer.clip_grads")
    if clip_grads.l2_norm_impl is utils.local_multi_tensor_l2_norm:
        clip_grads.l2_norm_impl = foreach_l2_norm
    if clip_grads.multi_tensor_scale_impl is utils.local_multi_tensor_scale:
        clip_grads.multi_tensor_scale_impl = foreach_scale


def _patch_fp8_quantiser() -> None:
    distrib_optimizer = importlib.import_module("megatron.core.optimizer.distrib_optimizer")
    original = distrib_optimizer.quantize_param_shard

    def quantize_param_shard(model_params, *args, **kwargs):
        if len(model_params):
            original(model_params, *args, **kwargs)

    distrib_optimizer.quantize_param_shard = quantize_param_shard


def _patch_rng_helpers() -> None:
    random = importlib.import_module("megatron.core.tensor_parallel.random")

    def get_state(device=None, clone=False, graph_safe=False):
        return torch.get_rng_state()

    def set_state(new_state, device=-1, graph_safe=False):
        torch.set_rng_state(new_state)

    random._get_cuda_rng_state = get_state  # 0.16 name (0.12 calls torch.cuda.get_rng_state directly)
    random._set_cuda_rng_state = set_state
    # In-place copies of the helpers made by other modules at import time.
    for name, module in list(sys.modules.items()):
        if name.startswith("megatron.core") and module is not random:
            if getattr(module, "_set_cuda_rng_state", None) is not None:
                module._set_cuda_rng_state = set_state
            if getattr(module, "_get_cuda_rng_state", None) is not None:
                module._get_cuda_rng_state = get_state
