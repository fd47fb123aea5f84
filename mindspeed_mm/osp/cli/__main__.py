"""`python -m mindspeed_mm.osp.cli ...` (what torchrun and the launchers in examples/ run): the `osp` command."""
import sys

from mindspeed_mm.osp.cli import main

sys.exit(main())
