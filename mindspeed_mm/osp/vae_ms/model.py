"""WF-VAE encoder/decoder (Open-Sora Plan v1.3 4x8x8 and v1.5 8x8x8) as MindSpore Cells.

Parameter names are the official ones, so `encoder.*`/`decoder.*` of an official state dict load 1:1.
Chunked inference keeps the causal cache as explicit tensors passed in and out of fixed-shape compiled cells
(see `layers.py`); the chunk loop lives in `wfvae.py`.
"""
from __future__ import annotations

from mindspore import nn, ops

from mindspeed_mm.osp.vae.config import WFVAEConfig

from .layers import (AttnBlock3DFix, CausalConv3d, ChannelNorm, Downsample2D, Downsample3D, FrameConv2d,
                     HaarWavelet2D, HaarWavelet3D, InverseHaarWavelet2D, InverseHaarWavelet3D, ResnetBlock2D,
                     ResnetBlock3D, StreamSequential, Upsample2D, Upsample3D, _split, silu)


class Encoder(nn.Cell):
    """Video (B,3,T,H,W) in [-1,1] -> moments (B,2L,(T-1)/R+1,H/8,W/8), plus the wavelet coefficients the
    wavelet-loss needs. Strictly causal; `cache=None` starts a clip, otherwise continues it."""

    def __init__(self, cfg: WFVAEConfig):
        super().__init__()
        c, ee, nrb = cfg.base_channels, cfg.encoder_energy_flow_hidden_size, cfg.encoder_num_resblocks
        self.l1_3d = l1_3d = cfg.temporal_compression == 8  # v1.5: 3-D level-1 wavelet
        self.wavelet_in = HaarWavelet3D()
        self.wavelet_l1 = HaarWavelet3D() if l1_3d else HaarWavelet2D()
        self.wavelet_l2 = HaarWavelet3D()
        self.down1 = StreamSequential([FrameConv2d(24, c, 3, padding=1)] + [ResnetBlock2D(c, c) for _ in range(nrb)] +
                                      [Downsample3D(c) if l1_3d else Downsample2D(c)])
        self.down2 = StreamSequential([FrameConv2d(c + ee, 2 * c, 3, padding=1)] +
                                      [ResnetBlock3D(2 * c, 2 * c) for _ in range(nrb)] + [Downsample3D(2 * c)])
        self.connect_l1 = FrameConv2d(24 if l1_3d else 12, ee, 3, padding=1)
        self.connect_l2 = FrameConv2d(24, ee, 3, padding=1)
        self.mid = StreamSequential([ResnetBlock3D(2 * c + ee, 4 * c), AttnBlock3DFix(4 * c), ResnetBlock3D(4 * c, 4 * c)])
        self.norm_out = ChannelNorm(4 * c)
        self.conv_out = CausalConv3d(4 * c, 2 * cfg.latent_dim, 3, padding=1)
        self.n_cache = self.down1.n_cache + self.down2.n_cache + self.mid.n_cache + 1

    def construct(self, x, cache=None):
        first = cache is None
        coeffs = self.wavelet_in(x, first)
        l1_coeffs = self.wavelet_l1(coeffs[:, :3], first)
        l1, _ = self.connect_l1(l1_coeffs)
        l2_coeffs = self.wavelet_l2(l1_coeffs[:, :3], first)
        l2, _ = self.connect_l2(l2_coeffs)
        o1, o2 = self.down1.n_cache, self.down1.n_cache + self.down2.n_cache
        h, c1 = self.down1(coeffs, _split(cache, 0, self.down1.n_cache))
        h, c2 = self.down2(ops.cat((h, l1), 1), _split(cache, o1, self.down2.n_cache))
        h, c3 = self.mid(ops.cat((h, l2), 1), _split(cache, o2, self.mid.n_cache))
        h, c4 = self.conv_out(silu(self.norm_out(h)), _split(cache, o2 + self.mid.n_cache, 1))
        return h, c1 + c2 + c3 + c4, l1_coeffs, l2_coeffs


class Decoder(nn.Cell):
    """Latents (B,L,Tl,h,w) -> video (B,3,1+R(Tl-1),8h,8w) and the predicted wavelet coefficients.

    `lookahead` = number of trailing latent frames (0 or 1) that belong to the next chunk; the last
    R * lookahead output frames are then not final and the caller drops them.
    """

    def __init__(self, cfg: WFVAEConfig):
        super().__init__()
        c, ed, nrb, crl = (cfg.base_channels, cfg.decoder_energy_flow_hidden_size, cfg.decoder_num_resblocks,
                           cfg.connect_res_layer_num)
        self.ed = ed
        l1_3d = cfg.temporal_compression == 8
        self.conv_in = CausalConv3d(cfg.latent_dim, 4 * c, 3, padding=1)
        self.mid = StreamSequential([ResnetBlock3D(4 * c, 4 * c), AttnBlock3DFix(4 * c), ResnetBlock3D(4 * c, 4 * c + ed)])
        self.up2 = StreamSequential([ResnetBlock3D(4 * c, 4 * c) for _ in range(nrb)] + [Upsample3D(4 * c)] +
                                    [ResnetBlock3D(4 * c, 4 * c + ed)])
        self.up1 = StreamSequential([ResnetBlock3D(4 * c if i == 0 else 2 * c, 2 * c) for i in range(nrb)] +
                                    [Upsample3D(2 * c) if l1_3d else Upsample2D(2 * c)] + [ResnetBlock3D(2 * c, 2 * c)])
        self.layer = StreamSequential([ResnetBlock3D(2 * c, c), ResnetBlock3D(c, c)])
        self.connect_l1 = StreamSequential([ResnetBlock3D(ed, ed) for _ in range(crl)] +
                                           [FrameConv2d(ed, 24 if l1_3d else 12, 3, padding=1)])
        self.connect_l2 = StreamSequential([ResnetBlock3D(ed, ed) for _ in range(crl)] + [FrameConv2d(ed, 24, 3, padding=1)])
        self.norm_out = ChannelNorm(c)
        self.conv_out = FrameConv2d(c, 24, 3, padding=1)
        self.inverse_wavelet_l2 = InverseHaarWavelet3D()
        self.inverse_wavelet_l1 = InverseHaarWavelet3D() if l1_3d else InverseHaarWavelet2D()
        self.inverse_wavelet_out = InverseHaarWavelet3D()
        parts = (1, self.mid.n_cache, self.connect_l2.n_cache, self.up2.n_cache, self.connect_l1.n_cache,
                 self.up1.n_cache, self.layer.n_cache)
        self.offsets = tuple(sum(parts[:i]) for i in range(len(parts) + 1))
        self.n_cache = self.offsets[-1]

    def construct(self, z, cache=None, lookahead=0):
        first = cache is None
        o = self.offsets
        h, c0 = self.conv_in(z, _split(cache, o[0], 1), lookahead)
        h, c1 = self.mid(h, _split(cache, o[1], o[2] - o[1]), lookahead)
        ed = self.ed
        split = h.shape[1] - ed
        l2_coeffs, c2 = self.connect_l2(h[:, split:], _split(cache, o[2], o[3] - o[2]), lookahead)
        l2 = self.inverse_wavelet_l2(l2_coeffs, first)
        h, c3 = self.up2(h[:, :split], _split(cache, o[3], o[4] - o[3]), lookahead)
        lookahead = lookahead * self.up2.t_scale
        split = h.shape[1] - ed
        l1_coeffs, c4 = self.connect_l1(h[:, split:], _split(cache, o[4], o[5] - o[4]), lookahead)
        l1_coeffs = ops.cat((l1_coeffs[:, :3] + l2, l1_coeffs[:, 3:]), 1)
        l1 = self.inverse_wavelet_l1(l1_coeffs, first)
        h, c5 = self.up1(h[:, :split], _split(cache, o[5], o[6] - o[5]), lookahead)
        lookahead = lookahead * self.up1.t_scale
        h, c6 = self.layer(h, _split(cache, o[6], o[7] - o[6]), lookahead)
        h, _ = self.conv_out(silu(self.norm_out(h)))
        h = ops.cat((h[:, :3] + l1, h[:, 3:]), 1)
        x = self.inverse_wavelet_out(h, first)
        return x, c0 + c1 + c2 + c3 + c4 + c5 + c6, l1_coeffs, l2_coeffs
