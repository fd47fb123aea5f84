"""The README's main job runs with only the `quickstart` extra (PyAV, transformers) installed: every other optional
package is made unimportable in a fresh interpreter, then the embedded default model samples a clip and the VAE
demo reconstructs one. Guards `pip install -e .[quickstart]` / `bash tools/bootstrap_env.sh quickstart`."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The optional packages of setup.py's extras that the quickstart extra does not install.
NOT_IN_QUICKSTART = ("megatron", "diffusers", "mindspore", "triton", "scenedetect", "cv2", "decord", "tensorboard",
                     "torch_npu", "flash_attn")

RUN = """
import sys
BLOCKED = sys.argv[1].split(",")
for name in BLOCKED:   # `import name` raises ModuleNotFoundError, importlib.util.find_spec(name) gives None
    sys.modules[name] = None
from mindspeed_mm.osp.cli import main
out = sys.argv[2]
assert main(["sample", "--prompt", "a red circle moving to the right", "--steps", "2", "--output",
             out + "/red.mp4"]) == 0
assert main(["vae", "reconstruct", "--demo", out + "/demo.mp4"]) == 0
leaked = sorted(m for m, mod in sys.modules.items() if mod is not None and m.split(".")[0] in BLOCKED)
assert not leaked, leaked
"""


def test_main_job_needs_only_the_quickstart_extra(tmp_path):
    done = subprocess.run([sys.executable, "-c", RUN, ",".join(NOT_IN_QUICKSTART), str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "red.mp4").stat().st_size > 0 and (tmp_path / "demo.mp4").stat().st_size > 0
    assert "PSNR" in done.stdout

