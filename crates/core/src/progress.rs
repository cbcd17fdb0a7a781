//! The one progress-bar look every command shares.

use indicatif::{ProgressBar, ProgressStyle};

/// The bar's template: what, how far, how long, how much longer.
pub const TEMPLATE: &str =
    "{prefix} [{bar:30}] {pos}/{len} {unit} {elapsed_precise} eta {eta} {msg}";

/// A progress bar over `len` items (`unit`, e.g. "samples" or "steps"),
/// labelled `prefix`; hidden unless `show`. `len` may be 0 and set later
/// with [`ProgressBar::set_length`].
pub fn bar(show: bool, len: u64, prefix: &str, unit: &str) -> ProgressBar {
    let bar = if show {
        ProgressBar::new(len)
    } else {
        ProgressBar::hidden()
    };
    // `{unit}` is not an indicatif key: substitute it once, escaping braces.
    let unit = unit.replace('{', "{{").replace('}', "}}");
    bar.set_style(
        ProgressStyle::with_template(&TEMPLATE.replace("{unit}", &unit)).expect("valid template"),
    );
    bar.set_prefix(prefix.to_string());
    bar
}

#[cfg(test)]
mod tests {
    #[test]
    fn hidden_bars_still_count() {
        let b = super::bar(false, 0, "train", "steps {odd}");
        b.set_length(4);
        b.inc(3);
        assert_eq!(b.position(), 3);
        assert_eq!(b.length(), Some(4));
    }
}
