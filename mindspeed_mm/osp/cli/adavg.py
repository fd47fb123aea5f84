"""`osp adavg`: the Skiparse paper's table of average attention distances and Skiparse's attention FLOPs relative to
dense attention (library: mindspeed_mm.osp.ops.adavg)."""
from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "adavg", help="average attention distance of Full/2+1D/Skip+Window/Skiparse",
        description="Print the Skiparse paper's table: for a T x H x W token grid, how many attention steps a token "
                    "needs on average to reach any other token (ADavg) under full 3D attention, 2+1D, Skip+Window "
                    "and Skiparse with each sparse ratio k: exact pair counts on the grid, and in brackets the "
                    "large-grid limit the paper prints; then Skiparse's attention FLOPs relative to dense attention. "
                    "No model or weights involved.")
    p.add_argument("--T", type=int, default=24, help="latent frames after patching (default 24)")
    p.add_argument("--H", type=int, default=32, help="token rows after patching (default 32)")
    p.add_argument("--W", type=int, default=32, help="token columns after patching (default 32)")
    p.add_argument("--k", type=int, nargs="+", default=[2, 4, 6, 8],
                   help="Skiparse sparse ratios to tabulate (default 2 4 6 8; v1.3 uses 4)")
    p.set_defaults(func=_main)


def _main(args) -> int:
    from mindspeed_mm.osp.ops.adavg import SCHEMES, average_attention_distance, large_grid_limit

    T, H, W, ks = args.T, args.H, args.W, args.k
    print(f"Average attention distance on a {T}x{H}x{W} token grid (N = {T * H * W})")
    print("exact pair count [large-grid limit, as printed in the paper]")
    print(f"{'scheme':<12}" + "".join(f"{'k=' + str(k):>18}" for k in ks))
    for scheme in SCHEMES:
        cells = []
        for k in ks:
            exact = average_attention_distance(scheme, k, T, H, W)
            cells.append(f"{exact:.4f} [{_round3(large_grid_limit(scheme, k, T, H, W))}]")
        print(f"{scheme:<12}" + "".join(f"{c:>18}" for c in cells))
    print("Skiparse video attention FLOPs vs dense: " +
          ", ".join(f"k={k}: {_video_ratio(T * H * W, k):.4f}" for k in ks))
    return 0


def _round3(x: float) -> str:
    """Three decimals, halves rounded up as the paper does (1.5625 -> 1.563)."""
    return str(Decimal(x).quantize(Decimal("0.001"), rounding=ROUND_HALF_UP))


def _video_ratio(n: int, k: int) -> float:
    from mindspeed_mm.osp.ops.adavg import skiparse_attention_flops

    f = skiparse_attention_flops(n, k, heads=1, head_dim=1)
    return f.skiparse_video_video / f.dense_video_video
