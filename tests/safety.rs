//! Output safety: what the runner writes, replaces and refuses.
