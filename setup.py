"""mindspeed_mm.osp: Open-Sora Plan (WF-VAE, Skiparse DiT, SUV) training and sampling, Ascend-first with a CUDA port.

`mindspeed_mm` is a namespace package here: we ship only `mindspeed_mm/osp/`, never `mindspeed_mm/__init__.py`,
so this package installs next to Ascend's MindSpeed-MM (which owns a regular `mindspeed_mm` package) without
overwriting any of its files. See README "Coexisting with MindSpeed-MM".
"""
import os

from setuptools import find_namespace_packages, setup
from setuptools.command.build_py import build_py


class BuildPyWithPth(build_py):
    """Also install mindspeed_mm_osp.pth, which keeps mindspeed_mm.osp importable next to MindSpeed-MM."""

    def run(self):
        super().run()
        self.copy_file("mindspeed_mm_osp.pth", os.path.join(self.build_lib, "mindspeed_mm_osp.pth"))


# PyAV 18.1.1 deadlocks forked DataLoader workers that decode video once the parent has used PyAV
# (tests/test_data_dataset.py hangs with it and passes with 18.1.0, same machine).
PYAV = "av>=11,!=18.1.1"

EXTRAS = {
    # The README's main job (the embedded default model's sample and WF-VAE demo): mp4 I/O and the text encoders.
    "quickstart": [PYAV, "transformers>=4.40", "tokenizers"],
    "test": ["pytest>=7"],
    # PyAV first; decord (fast, what Open-Sora Plan uses) and OpenCV are picked up when installed.
    "video": [PYAV, "opencv-python-headless>=4.8",
              'decord>=0.6; platform_machine == "x86_64" and python_version < "3.12"'],
    "megatron": ["megatron-core>=0.12.1,<0.17"],
    # `osp convert dit --to diffusers` and pipeline folders: sharded safetensors via huggingface_hub.
    "convert": ["huggingface_hub>=0.24"],
    "text": ["transformers>=4.40", "tokenizers", "sentencepiece"],
    # `osp sample`: the v1.3 sampler is diffusers' Euler-ancestral scheduler; images via Pillow.
    "sample": ["diffusers>=0.30", "transformers>=4.40", "tokenizers", "sentencepiece", "pillow", PYAV,
               "huggingface_hub>=0.24"],
    "triton": ["triton>=3.0"],
    # `osp data curate`: jump cuts (PySceneDetect), optical flow (OpenCV), slicing (PyAV). EasyOCR is not listed: it
    # pulls its own torch/torchvision (and CUDA wheels) over ours; install it by hand next to a matching torch.
    "curate": ["scenedetect-headless>=0.7", "opencv-python-headless>=4.8", PYAV],
    # MindSpore 2.10 breaks in PyNative with numpy 2.x (shared specs, ascend.md A2): pin numpy < 2 with it.
    "mindspore": ["mindspore>=2.6,<2.11", "numpy<2"],
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})

setup(
    name="mindspeed-mm-osp",
    version="0.1.0",
    description=__doc__.splitlines()[0],
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_namespace_packages(include=["mindspeed_mm.osp", "mindspeed_mm.osp.*"]),
    py_modules=["mindspeed_mm_osp_finder"],
    cmdclass={"build_py": BuildPyWithPth},
    package_data={"mindspeed_mm.osp": ["configs/*.json", "default_model/*", "default_model/*/*"]},
    python_requires=">=3.10,<3.13",
    install_requires=["torch>=2.1", "numpy>=1.24", "einops>=0.7", "safetensors>=0.4", "tqdm>=4.60"],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["osp = mindspeed_mm.osp.cli:main"]},
    classifiers=["Programming Language :: Python :: 3.10", "Programming Language :: Python :: 3.11",
                 "Programming Language :: Python :: 3.12"],
)
