"""Checkpoint converters between official layouts and ours (`osp convert <model> ...`)."""
