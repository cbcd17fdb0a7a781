//! `--set key.path=value` overrides, applied to a manifest's text before it
//! is parsed, so errors in overridden values are located like any other.

/// Applies `--set a.b.0.c=value` overrides to a manifest's text. Values parse
/// as TOML (`3`, `true`, `"x"`, `[1, 2]`); anything else is taken as a string.
pub fn apply_overrides(text: &str, overrides: &[String]) -> Result<String, String> {
    if overrides.is_empty() {
        return Ok(text.to_string());
    }
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    for o in overrides {
        let (path, raw) = o
            .split_once('=')
            .ok_or_else(|| format!("--set {o}: expected KEY.PATH=VALUE"))?;
        let value = raw
            .trim()
            .parse::<toml_edit::Value>()
            .unwrap_or_else(|_| toml_edit::Value::from(raw.trim()));
        let segs: Vec<&str> = path.trim().split('.').collect();
        let mut item = doc.as_item_mut();
        for (i, seg) in segs.iter().enumerate() {
            let last = i + 1 == segs.len();
            item = if let Ok(idx) = seg.parse::<usize>() {
                let len = match &*item {
                    toml_edit::Item::ArrayOfTables(a) => a.len(),
                    toml_edit::Item::Value(toml_edit::Value::Array(a)) => a.len(),
                    _ => 0,
                };
                item.get_mut(idx).ok_or_else(|| {
                    format!(
                        "--set {o}: `{}` has {len} entries, so there is no entry {idx}",
                        segs[..i].join(".")
                    )
                })?
            } else {
                let table = item.as_table_like_mut().ok_or_else(|| {
                    format!("--set {o}: `{}` is not a table", segs[..i].join("."))
                })?;
                if table.get(seg).is_none() {
                    // A placeholder the value below replaces (Item::None would
                    // read as absent).
                    let fresh = if last {
                        toml_edit::value(false)
                    } else {
                        toml_edit::table()
                    };
                    table.insert(seg, fresh);
                }
                table.get_mut(seg).expect("just inserted")
            };
        }
        *item = toml_edit::Item::Value(value);
    }
    Ok(doc.to_string())
}
