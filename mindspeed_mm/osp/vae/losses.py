"""WF-VAE training losses (WF-VAE paper / `LPIPSWithDiscriminator3D` recipe, written from the spec):

    L_G = nll + kl_weight * KL + wl_weight * L_WL + d_w * L_gen          (generator / VAE step)
    L_D = 0.5 * (mean(relu(1 - D(x))) + mean(relu(1 + D(x_hat))))       (discriminator step, hinge)

- nll = (l1_weight * sum|x - x_hat| + lpips_weight * C*H*W * sum_frames LPIPS(x, x_hat)) / (B*T): the official
  code flattens frames into the batch, adds the per-frame LPIPS value to every pixel's L1 term (broadcast) and
  divides the sum by that flattened batch (B*T), with logvar fixed at 0;
- KL = sum over latents of KL(q(z|x) || N(0, I)) / B;
- L_WL = sum|l1_enc - l1_dec| / B + sum|l2_enc - l2_dec| / B (encoder wavelet-flow coefficients vs the decoder's);
- L_gen = -mean(D(x_hat)); d_w = disc_weight * clamp(||grad nll|| / (||grad L_gen|| + 1e-6), 0, 1e6), both
  gradients taken w.r.t. the decoder's last layer (`decoder.conv_out.weight`); 0 before `disc_start`.

LPIPS (VGG16, v0.1) is our own module reading two local weight files; it is never downloaded and never skipped:
`lpips_weight > 0` without the files is an error.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("batch", "group")
MAX_ADAPTIVE_WEIGHT = 1e6


@dataclass
class LossConfig:
    l1_weight: float = 1.0
    kl_weight: float = 1e-6
    wl_weight: float = 0.1            # wavelet-flow energy loss (paper optimum)
    lpips_weight: float = 0.0         # > 0 needs lpips_vgg and lpips_lin
    lpips_vgg: Optional[str] = None   # torchvision VGG16 weights (vgg16-397923af.pth: `features.N.*` keys)
    lpips_lin: Optional[str] = None   # LPIPS v0.1 linear layers (the `lpips` package's weights/v0.1/vgg.pth)
    disc_weight: float = 0.5
    disc_start: int = 0               # first step (0-based) with the GAN terms and discriminator updates
    disc_num_layers: int = 4
    disc_ndf: int = 64
    disc_norm: str = "batch"          # "batch" (official BatchNorm3d) or "group" (GroupNorm: batch-size independent)
    disc_dropout: float = 0.3

    def problems(self) -> list[str]:
        """What is wrong with the values (empty when they are fine); `missing_files` checks the LPIPS paths."""
        out = []
        for name in ("l1_weight", "kl_weight", "wl_weight", "lpips_weight", "disc_weight"):
            if getattr(self, name) < 0:
                out.append(f"loss.{name} must be >= 0, got {getattr(self, name)}")
        if self.disc_start < 0 or self.disc_num_layers < 1 or self.disc_ndf < 1:
            out.append("need loss.disc_start >= 0, loss.disc_num_layers >= 1 and loss.disc_ndf >= 1")
        if self.disc_norm not in NORMS:
            out.append(f"loss.disc_norm must be one of {NORMS}, got {self.disc_norm!r}")
        if not 0 <= self.disc_dropout < 1:
            out.append(f"loss.disc_dropout must be in [0, 1), got {self.disc_dropout}")
        unset = [f"loss.{k}" for k in ("lpips_vgg", "lpips_lin") if getattr(self, k) is None]
        if self.lpips_weight > 0 and unset:
            out.append(self._lpips_fix(f"{' and '.join(unset)} {'is' if len(unset) == 1 else 'are'} unset"))
        return out

    def missing_files(self) -> list[str]:
        """The LPIPS weight files that LPIPS needs (lpips_weight > 0) and that do not exist."""
        paths = [getattr(self, k) for k in ("lpips_vgg", "lpips_lin")]
        missing = [p for p in paths if p is not None and not Path(p).is_file()]
        return [self._lpips_fix(f"no such file: {', '.join(missing)}")] if self.lpips_weight > 0 and missing else []

    def _lpips_fix(self, problem: str) -> str:
        return (f"loss.lpips_weight={self.lpips_weight} needs local LPIPS weights, but {problem}: set loss.lpips_vgg "
                "to torchvision's VGG16 weights (vgg16-397923af.pth) and loss.lpips_lin to the LPIPS linear layers "
                "(weights/v0.1/vgg.pth of `pip install lpips`), or set loss.lpips_weight=0 to train without LPIPS")


# ---------------------------------------------------------------------------------------------------- discriminator
def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    return nn.GroupNorm(math.gcd(32, channels), channels)


class NLayerDiscriminator3D(nn.Module):
    """3-D PatchGAN on (B, 3, T, H, W): Conv3d k3 s2 + LeakyReLU(0.2); then `num_layers` blocks of Conv3d k3
    (strides (2,2,2), (1,2,2), ..., the last one 1) + norm + LeakyReLU(0.2) + Dropout, widths ndf * min(2^n, 8);
    then a Conv3d k3 to one logit per patch."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, num_layers: int = 4, norm: str = "batch",
                 dropout: float = 0.3):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        layers: list[nn.Module] = [nn.Conv3d(in_channels, ndf, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = ndf
        for n in range(1, num_layers + 1):
            out = ndf * min(2 ** n, 8)
            stride = 1 if n == num_layers else (2 if n == 1 else 1, 2, 2)
            layers += [nn.Conv3d(width, out, 3, stride=stride, padding=1, bias=False), _norm(norm, out),
                       nn.LeakyReLU(0.2), nn.Dropout(dropout)]
            width = out
        layers.append(nn.Conv3d(width, 1, 3, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, (nn.BatchNorm3d, nn.GroupNorm)):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.main(video)


# ---------------------------------------------------------------------------------------------------- loss terms
def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return -logits_fake.mean()


def kl_loss(posterior) -> torch.Tensor:
    """KL(q || N(0, I)) summed over all latent elements, divided by the batch size."""
    if hasattr(posterior, "kl"):
        kl = posterior.kl()
    else:
        mean, logvar = posterior.mean, posterior.logvar
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)
    return kl.sum() / kl.shape[0]


def wavelet_loss(enc_coeffs: Sequence[torch.Tensor], dec_coeffs: Sequence[torch.Tensor]) -> torch.Tensor:
    """L_WL: sum over levels of sum|enc - dec| / B."""
    if len(enc_coeffs) != len(dec_coeffs) or not enc_coeffs:
        raise ValueError(f"need matching non-empty coefficient lists, got {len(enc_coeffs)} and {len(dec_coeffs)}")
    batch = enc_coeffs[0].shape[0]
    return sum((e - d).abs().sum() for e, d in zip(enc_coeffs, dec_coeffs)) / batch


def adaptive_weight(nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    grad_reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """||d nll / d W|| / (||d g_loss / d W|| + 1e-6), clamped to [0, 1e6], detached (W = `last_layer`).
    `grad_reduce` (data parallel: the mean over ranks) is applied to both gradients before the norms."""
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    if grad_reduce is not None:
        nll_grad, g_grad = grad_reduce(nll_grad), grad_reduce(g_grad)
    weight = torch.norm(nll_grad) / (torch.norm(g_grad) + 1e-6)
    return weight.clamp(0.0, MAX_ADAPTIVE_WEIGHT).detach()


# ---------------------------------------------------------------------------------------------------- LPIPS
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
LPIPS_TAPS = (3, 8, 15, 22, 29)        # torchvision `features` indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
LPIPS_CHANNELS = (64, 128, 256, 512, 512)
_LIN_KEY = re.compile(r"^lin(\d)\.model\.\d\.weight$")


class LPIPS(nn.Module):
    """LPIPS v0.1 with VGG16 features: per image pair, the sum over 5 layers of the spatial mean of
    lin_k((f_k(x)/||f_k(x)|| - f_k(y)/||f_k(y)||)^2); inputs in [-1, 1], output (N,). Frozen, eval mode."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        width = 3
        for item in VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(width, item, 3, padding=1), nn.ReLU()]
                width = item
        self.features = nn.Sequential(*layers)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in LPIPS_CHANNELS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_files(cls, vgg_path: str, lin_path: str) -> "LPIPS":
        """Load torchvision VGG16 weights (`features.N.weight/bias`; other keys ignored) and the LPIPS linear layers
        (`linK.model.M.weight`); missing or mis-shaped keys raise, naming them."""
        model = cls()
        vgg = torch.load(vgg_path, map_location="cpu", weights_only=True)
        lin = torch.load(lin_path, map_location="cpu", weights_only=True)
        weights = {k: v for k, v in vgg.items() if k.startswith("features.")}
        for key, value in lin.items():
            match = _LIN_KEY.match(key)
            if match:
                weights[f"lins.{match.group(1)}.weight"] = value
        own = model.state_dict()
        missing = sorted(set(own) - set(weights))
        bad = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
        if missing or bad:
            raise ValueError(f"LPIPS weights from {vgg_path} and {lin_path} do not fit VGG16/LPIPS v0.1: "
                             f"missing {missing[:6]}, mis-shaped {bad[:6]}")
        model.load_state_dict({k: weights[k] for k in own})
        return model

    def train(self, mode: bool = True) -> "LPIPS":
        return super().train(False)   # always eval: the linear layers' dropout is off

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = (torch.cat([x, y]) - self.shift) / self.scale
        total = 0.0
        taps = iter(self.lins)
        for index, layer in enumerate(self.features):
            h = layer(h)
            if index in LPIPS_TAPS:
                f = h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                fx, fy = f.chunk(2)
                total = total + next(taps)((fx - fy).pow(2)).mean((1, 2, 3))
            if index == LPIPS_TAPS[-1]:
                break
        return total


# ---------------------------------------------------------------------------------------------------- combined
class WFVAELoss(nn.Module):
    """The recipe's losses and the discriminator they train (`self.discriminator`).

    `generator(...)` -> (L_G, terms) and `discriminator_loss(...)` -> (L_D, terms); terms are detached floats for
    logging. `grad_reduce` averages the adaptive weight's gradients over data-parallel ranks.
    """

    def __init__(self, config: LossConfig):
        super().__init__()
        problems = config.problems() + config.missing_files()
        if problems:
            raise ValueError("; ".join(problems))
        self.config = config
        self.discriminator = NLayerDiscriminator3D(3, config.disc_ndf, config.disc_num_layers, config.disc_norm,
                                                   config.disc_dropout)
        self.lpips = LPIPS.from_files(config.lpips_vgg, config.lpips_lin) if config.lpips_weight > 0 else None

    def gan_active(self, step: int) -> bool:
        """Whether step `step` (0-based) trains with the GAN terms (disc_start; disc_weight > 0)."""
        return step >= self.config.disc_start and self.config.disc_weight > 0

    def reconstruction(self, video: torch.Tensor, recon: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """nll per (B*T) frames (see the module docstring) and its parts."""
        b, c, t, h, w = video.shape
        l1 = (video - recon).abs().sum()
        nll = self.config.l1_weight * l1
        terms = {"l1_loss": l1.item() / (b * t)}
        if self.lpips is not None:
            def frames(v: torch.Tensor) -> torch.Tensor:
                return v.transpose(1, 2).reshape(b * t, c, h, w)
            p = self.lpips(frames(video), frames(recon))
            nll = nll + self.config.lpips_weight * c * h * w * p.sum()
            terms["lpips"] = p.mean().item()
        return nll / (b * t), terms

    def generator(self, video: torch.Tensor, recon: torch.Tensor, posterior, enc_coeffs, dec_coeffs, step: int,
                  last_layer: torch.Tensor,
                  grad_reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> tuple[torch.Tensor, dict]:
        cfg = self.config
        nll, terms = self.reconstruction(video, recon)
        kl = kl_loss(posterior)
        wl = wavelet_loss(enc_coeffs, dec_coeffs)
        loss = nll + cfg.kl_weight * kl + cfg.wl_weight * wl
        terms.update(rec_loss=nll.item(), kl_loss=kl.item(), wl_loss=wl.item())
        if self.gan_active(step):
            for p in self.discriminator.parameters():
                p.requires_grad_(False)
            try:
                g_loss = generator_loss(self.discriminator(recon))
            finally:
                for p in self.discriminator.parameters():
                    p.requires_grad_(True)
            d_weight = cfg.disc_weight * adaptive_weight(nll, g_loss, last_layer, grad_reduce)
            loss = loss + d_weight * g_loss
            terms.update(g_loss=g_loss.item(), d_weight=d_weight.item())
        terms["loss"] = loss.item()
        return loss, terms

    def discriminator_loss(self, video: torch.Tensor, recon: torch.Tensor,
                           discriminator: Optional[nn.Module] = None) -> tuple[torch.Tensor, dict]:
        """Hinge loss on real clips and detached reconstructions; `discriminator`: a wrapper of
        `self.discriminator` (DistributedDataParallel) to call instead."""
        disc = discriminator or self.discriminator
        logits_real = disc(video.detach())
        logits_fake = disc(recon.detach())
        loss = hinge_d_loss(logits_real, logits_fake)
        return loss, {"disc_loss": loss.item(), "logits_real": logits_real.mean().item(),
                      "logits_fake": logits_fake.mean().item()}
