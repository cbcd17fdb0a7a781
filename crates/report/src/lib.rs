//! Everything a reader sees of an experiment, recomputed from what its run
//! left on disk ([`format`]): tables with intervals, plots, the HTML report.

pub mod format;
pub mod stats;
