"""WF-VAE decoder: mirror of the encoder; energy-flow branches predict wavelet coefficients that are added back."""
from __future__ import annotations

import torch
from torch import nn

from mindspeed_mm.osp.vae.blocks import (AttnBlock3DFix, ChannelLayerNorm, ResnetBlock3D, Spatial2xTime2x3DUpsample,
                                         Upsample, silu_)
from mindspeed_mm.osp.vae.causal_conv import CausalConv3d, FrameAligner, FrameConv2d
from mindspeed_mm.osp.vae.config import WFVAEConfig
from mindspeed_mm.osp.vae.wavelets import InverseHaarWavelet2D, InverseHaarWavelet3D


def _add_low_band(coeffs: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """coeffs with `low` added to its first 3 channels (the all-low band of RGB)."""
    return torch.cat([coeffs[:, :3] + low, coeffs[:, 3:]], dim=1)


class Decoder(nn.Module):
    """latents (B, L, Tl, h, w) -> video (B, 3, 1 + R*(Tl-1), 8h, 8w) and the predicted wavelet coefficients.

    The time upsampling looks one frame ahead, so in chunked use each call emits the frames whose inputs are
    known and the call with `flush=True` (the last chunk) emits the rest; the concatenation over chunks equals
    the whole-clip output.
    """

    def __init__(self, cfg: WFVAEConfig):
        super().__init__()
        c, ed, nrb, crl = (cfg.base_channels, cfg.decoder_energy_flow_hidden_size, cfg.decoder_num_resblocks,
                           cfg.connect_res_layer_num)
        three_d = cfg.temporal_compression == 8
        self.energy_flow_size = ed
        self.conv_in = CausalConv3d(cfg.latent_dim, 4 * c, 3, padding=1)
        mid = [ResnetBlock3D(4 * c, 4 * c)]
        if cfg.use_attention:
            mid.append(AttnBlock3DFix(4 * c))
        mid.append(ResnetBlock3D(4 * c, 4 * c + ed))
        self.mid = nn.Sequential(*mid)
        self.up2 = nn.ModuleList([
            *[ResnetBlock3D(4 * c, 4 * c) for _ in range(nrb)],
            Spatial2xTime2x3DUpsample(4 * c, cfg.t_interpolation),
            ResnetBlock3D(4 * c, 4 * c + ed),
        ])
        self.up1 = nn.ModuleList([
            *[ResnetBlock3D(4 * c if i == 0 else 2 * c, 2 * c) for i in range(nrb)],
            Spatial2xTime2x3DUpsample(2 * c, cfg.t_interpolation) if three_d else Upsample(2 * c),
            ResnetBlock3D(2 * c, 2 * c),
        ])
        self.layer = nn.Sequential(ResnetBlock3D(2 * c, c), ResnetBlock3D(c, c))
        self.connect_l1 = nn.Sequential(*[ResnetBlock3D(ed, ed) for _ in range(crl)],
                                        FrameConv2d(ed, 24 if three_d else 12, 3, padding=1))
        self.connect_l2 = nn.Sequential(*[ResnetBlock3D(ed, ed) for _ in range(crl)], FrameConv2d(ed, 24, 3, padding=1))
        self.norm_out = ChannelLayerNorm(c)
        self.conv_out = FrameConv2d(c, 24, 3, padding=1)
        self.inverse_wavelet_transform_out = InverseHaarWavelet3D()
        self.inverse_wavelet_transform_l1 = InverseHaarWavelet3D() if three_d else InverseHaarWavelet2D()
        self.inverse_wavelet_transform_l2 = InverseHaarWavelet3D()
        self.align_l2 = FrameAligner()
        self.align_l1 = FrameAligner()

    @staticmethod
    def _run(blocks: nn.ModuleList, h: torch.Tensor, flush: bool) -> torch.Tensor:
        for block in blocks:
            h = block(h, flush) if isinstance(block, (Spatial2xTime2x3DUpsample, Upsample)) else block(h)
        return h

    def forward(self, z: torch.Tensor, flush: bool = True) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        ed = self.energy_flow_size
        h = self.mid(self.conv_in(z))
        l2_coeffs = self.connect_l2(h[:, -ed:])
        l2 = self.inverse_wavelet_transform_l2(l2_coeffs)

        h = self._run(self.up2, h[:, :-ed], flush)
        l1_coeffs, l2 = self.align_l2(self.connect_l1(h[:, -ed:]), l2)
        l1_coeffs = _add_low_band(l1_coeffs, l2)
        l1 = self.inverse_wavelet_transform_l1(l1_coeffs)

        h = self._run(self.up1, h[:, :-ed], flush)
        h = self.layer(h)
        h = self.conv_out(silu_(self.norm_out(h)))
        h, l1 = self.align_l1(h, l1)
        h = _add_low_band(h, l1)
        return self.inverse_wavelet_transform_out(h), (l1_coeffs, l2_coeffs)
