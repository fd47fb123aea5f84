"""The `osp train` job's pieces on the parallel engine: objectives, adaptive gradient clipping, sharded EMA,
the guarded optimizer step (non-finite skip)."""
