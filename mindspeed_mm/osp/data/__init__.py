"""Data: video reading and writing, video file discovery (buckets and datasets come later)."""
