"""WF-VAE encoder: a causal conv backbone fed by multi-level Haar wavelets through "energy flow" branches."""
from __future__ import annotations

import torch
from torch import nn

from mindspeed_mm.osp.vae.blocks import (AttnBlock3DFix, ChannelLayerNorm, Downsample, ResnetBlock2D, ResnetBlock3D,
                                         Spatial2xTime2x3DDownsample, silu_)
from mindspeed_mm.osp.vae.causal_conv import CausalConv3d, FrameAligner, FrameConv2d
from mindspeed_mm.osp.vae.config import WFVAEConfig
from mindspeed_mm.osp.vae.wavelets import HaarWavelet2D, HaarWavelet3D


class Encoder(nn.Module):
    """(B, 3, T, H, W) -> moments (B, 2L, (T-1)/R + 1, H/8, W/8) and the level-1/2 wavelet coefficients.

    Strictly causal: latent frame j depends on input frames <= R*j. Calling it on consecutive chunks (after
    `reset_streams`) gives the same moments as one call on the whole clip.
    """

    def __init__(self, cfg: WFVAEConfig):
        super().__init__()
        c, ee, nrb = cfg.base_channels, cfg.encoder_energy_flow_hidden_size, cfg.encoder_num_resblocks
        three_d = cfg.temporal_compression == 8
        self.wavelet_transform_in = HaarWavelet3D()
        self.wavelet_transform_l1 = HaarWavelet3D() if three_d else HaarWavelet2D()
        self.wavelet_transform_l2 = HaarWavelet3D()
        self.down1 = nn.Sequential(
            FrameConv2d(24, c, 3, padding=1),
            *[ResnetBlock2D(c, c) for _ in range(nrb)],
            Spatial2xTime2x3DDownsample(c) if three_d else Downsample(c),
        )
        self.down2 = nn.Sequential(
            FrameConv2d(c + ee, 2 * c, 3, padding=1),
            *[ResnetBlock3D(2 * c, 2 * c) for _ in range(nrb)],
            Spatial2xTime2x3DDownsample(2 * c),
        )
        self.connect_l1 = FrameConv2d(24 if three_d else 12, ee, 3, padding=1)
        self.connect_l2 = FrameConv2d(24, ee, 3, padding=1)
        mid = [ResnetBlock3D(2 * c + ee, 4 * c)]
        if cfg.use_attention:
            mid.append(AttnBlock3DFix(4 * c))
        mid.append(ResnetBlock3D(4 * c, 4 * c))
        self.mid = nn.Sequential(*mid)
        self.norm_out = ChannelLayerNorm(4 * c)
        self.conv_out = CausalConv3d(4 * c, 2 * cfg.latent_dim, 3, padding=1)
        self.align_l1 = FrameAligner()
        self.align_l2 = FrameAligner()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        coeffs = self.wavelet_transform_in(x)
        l1_coeffs = self.wavelet_transform_l1(coeffs[:, :3])
        l1 = self.connect_l1(l1_coeffs)
        l2_coeffs = self.wavelet_transform_l2(l1_coeffs[:, :3])
        l2 = self.connect_l2(l2_coeffs)

        h = self.down1(coeffs)
        h = torch.cat(self.align_l1(h, l1), dim=1)
        h = self.down2(h)
        h = torch.cat(self.align_l2(h, l2), dim=1)
        h = self.mid(h)
        h = self.conv_out(silu_(self.norm_out(h)))
        return h, (l1_coeffs, l2_coeffs)
