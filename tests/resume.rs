//! Checkpoints and `--resume`.
