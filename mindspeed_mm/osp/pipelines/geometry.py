"""Which video sizes a (VAE, DiT) pair can take, and the nearest valid ones when a request does not fit."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VideoGeometry:
    """Frames must be k * temporal_factor + 1; height and width multiples of spatial_factor * patch."""

    temporal_factor: int
    spatial_factor: int = 8
    patch: int = 2

    @property
    def size_stride(self) -> int:
        return self.spatial_factor * self.patch

    def valid_frames(self, num_frames: int) -> tuple[int, int]:
        """(nearest valid count <= num_frames, nearest valid count >= num_frames)."""
        tf = self.temporal_factor
        low = max(1, ((num_frames - 1) // tf) * tf + 1)
        return low, (low if low == num_frames else low + tf)

    def valid_size(self, size: int) -> tuple[int, int]:
        s = self.size_stride
        low = max(s, (size // s) * s)
        return low, (low if low == size else -(-size // s) * s)

    def resolve(self, num_frames: int, height: int, width: int, pad: bool = False) -> tuple[int, int, int]:
        """The size to generate at: the request itself, or with `pad` the next valid size (crop back afterwards).

        Without `pad`, a request that does not fit raises ValueError naming the nearest valid values.
        """
        for name, value in (("num_frames", num_frames), ("height", height), ("width", width)):
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        f_lo, f_hi = self.valid_frames(num_frames)
        h_lo, h_hi = self.valid_size(height)
        w_lo, w_hi = self.valid_size(width)
        if pad:
            return f_hi, h_hi, w_hi
        problems = []
        if f_lo != num_frames:
            problems.append(f"num_frames {num_frames} is not {self.temporal_factor}k+1 (nearest: {f_lo} or {f_hi})")
        if h_lo != height:
            problems.append(f"height {height} is not a multiple of {self.size_stride} (nearest: {h_lo} or {h_hi})")
        if w_lo != width:
            problems.append(f"width {width} is not a multiple of {self.size_stride} (nearest: {w_lo} or {w_hi})")
        if problems:
            raise ValueError("; ".join(problems) + ". Pick a valid size, or pad (CLI: --pad) to generate at "
                             f"{f_hi}x{h_hi}x{w_hi} and crop back to {num_frames}x{height}x{width}.")
        return num_frames, height, width

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        return ((num_frames - 1) // self.temporal_factor + 1, height // self.spatial_factor, width // self.spatial_factor)
