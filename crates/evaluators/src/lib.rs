//! Evaluators, each registered as an `evaluator` plugin.

pub mod exact_kl;
pub mod reward_stats;
mod winrate_llm;
pub mod winrate_rm;

/// A judge's name becomes column and file names (`win_<name>`): letters,
/// digits, `_` or `-` only. `key` is the setting that gave it.
pub(crate) fn check_judge_name(key: &str, name: &str) -> Result<(), align_core::PluginError> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(align_core::PluginError::invalid(
            key,
            format!("`{name}`: use letters, digits, `_` or `-` (it names the judge's columns)"),
        ))
    }
}
