"""Checkpoint formats, below the models (`dit/`, `vae/`) and the converters (`convert/`), which both build on them
and never on each other:

* `tensors`: weights files (safetensors, torch zip / legacy pickles) told apart by their bytes, read safely
  (`UntrustedPickleError` for pickles holding Python objects), checked before reading;
* `diffusers`: diffusers model folders (`config.json` + `diffusion_pytorch_model*.safetensors`, sharded with an index);
* `keys`: strict key checks, `module.` prefixes, the v1.3 MindSpeed-MM and v1.5 PKU / flat-block key names, the
  model family told by the key names;
* `presets`: the official config kwargs in mindspeed_mm/osp/configs;
* `megatron`: Megatron `mp_rank` folders (layout, TP/PP split and merge under a parallel plan's rules).
* `runs`: the folder layout of `osp train` runs (`checkpoints/latest`, `iter_XXXXXXX/`), told apart without
  megatron-core.

Nothing here imports a model, the parallel engine or a converter: what needs a model (a parallel plan) is passed in.
"""
