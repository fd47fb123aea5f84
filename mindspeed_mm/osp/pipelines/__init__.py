"""Text-to-video / image-to-video pipelines, pipeline folders, memory modes and tiny random presets."""
from __future__ import annotations

from .assemble import assemble_pipeline
from .folder import default_model
from .geometry import VideoGeometry
from .offload import BlockOffload
from .presets import PRESETS, build_preset
from .video import DEFAULTS, VideoPipeline, load_pipeline, save_pipeline

__all__ = ["BlockOffload", "assemble_pipeline", "DEFAULTS", "default_model", "PRESETS", "VideoGeometry", "VideoPipeline", "build_preset", "load_pipeline",
           "save_pipeline"]
