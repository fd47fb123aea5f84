"""Evaluation of generated media: detectors that score shapes-dataset clips (`shapes_detect`) and `osp eval shapes`
(`shapes_eval`: the model against a random-weights baseline on held-out and seen prompts)."""
