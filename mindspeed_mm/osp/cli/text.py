"""`osp text tiny OUT --captions DATA --dim D [--pooled-dim P]`: tiny frozen text encoders over a dataset's words
(the embedded default model's text_encoder/ and text_encoder_2/, or any small experiment)."""
from __future__ import annotations

import sys


def register(subparsers) -> None:
    text = subparsers.add_parser("text", help="text encoders: build tiny ones over a dataset's vocabulary",
                                 description=__doc__)
    sub = text.add_subparsers(dest="text_command", metavar="SUBCOMMAND")
    text.set_defaults(func=lambda args: text.print_help() or 2)
    p = sub.add_parser("tiny", help="write tiny random T5 (+ CLIP) encoders with word tokenizers over a dataset",
                       description="Write OUT/text_encoder, OUT/tokenizer (a 1-layer T5 encoder of width --dim and a "
                                   "word-level tokenizer over every word of the dataset's captions) and, with "
                                   "--pooled-dim, OUT/text_encoder_2 + OUT/tokenizer_2 (a 1-layer CLIP text model, "
                                   "projection --pooled-dim). Use them as model.text_encoder / tokenizer (_2) of "
                                   "`osp train` and as --text-encoder of `osp data extract`. Words not in the "
                                   "captions become <unk> at sampling time.")
    p.add_argument("output", help="new folder")
    p.add_argument("--captions", required=True, metavar="DATA",
                   help="dataset whose caption words make the vocabulary: data.txt or an annotation .json/.jsonl")
    p.add_argument("--dim", type=int, required=True, help="T5 width = the DiT's caption_channels")
    p.add_argument("--pooled-dim", type=int, default=None,
                   help="v1.5: CLIP projection = the DiT's pooled_projection_dim (omit for v1.3)")
    p.add_argument("--max-length", type=int, default=32, help="T5 tokenizer length (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random encoder weights (default 0)")
    p.set_defaults(func=_tiny)


def _tiny(args) -> int:
    from mindspeed_mm.osp.data.annotations import AnnotationError, load_annotations
    from mindspeed_mm.osp.text.tiny import caption_words, save_tiny_text_encoders

    try:
        if args.dim < 8 or args.dim % 2 or (args.pooled_dim is not None and args.pooled_dim < 1):
            raise ValueError("--dim must be an even number >= 8 and --pooled-dim >= 1")
        if args.max_length < 2:
            raise ValueError("--max-length must be >= 2 (the words and </s>)")
        words = caption_words(load_annotations(args.captions).captions)
        if not words:
            raise ValueError(f"{args.captions}: no caption words")
        out = save_tiny_text_encoders(args.output, words, args.dim, args.pooled_dim, args.max_length, args.seed)
    except (AnnotationError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"osp text tiny: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}: {len(words)} words; text_encoder (T5, width {args.dim})"
          + (f", text_encoder_2 (CLIP, projection {args.pooled_dim})" if args.pooled_dim else ""))
    return 0
