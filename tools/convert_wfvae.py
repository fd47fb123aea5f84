#!/usr/bin/env python
"""Convert WF-VAE checkpoints: `python tools/convert_wfvae.py --to osp|official SRC DST [--overwrite]`.

Same as `osp convert wfvae ...` (see docs/vae.md).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mindspeed_mm.osp.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["convert", "wfvae", *sys.argv[1:]]))
