"""Evaluation of generated media: simple detectors that score shapes-dataset prompts (`shapes_detect`)."""
