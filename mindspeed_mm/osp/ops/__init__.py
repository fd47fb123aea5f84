"""Operators shared by the models: attention backends, Skiparse rearrangements, RoPE, norms."""
