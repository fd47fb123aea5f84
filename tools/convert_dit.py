#!/usr/bin/env python
"""Convert DiT checkpoints: `python tools/convert_dit.py --to megatron|official|diffusers SRC DST [options]`.

Same as `osp convert dit ...` (see docs/parallel.md, "Converting denoiser checkpoints").
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mindspeed_mm.osp.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["convert", "dit", *sys.argv[1:]]))
