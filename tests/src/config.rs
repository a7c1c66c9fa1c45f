//! Writing jetrun config files from a test: the file, and TOML strings that
//! stay valid whatever path or script text goes into them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Writes `toml` to `dir/jetrun.toml` and returns its path. The runner runs
/// exec functions with their working directory set to `dir`.
pub fn write_config(dir: &Path, toml: &str) -> PathBuf {
    let path = dir.join("jetrun.toml");
    std::fs::write(&path, toml).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// A one-step saga on `ev.idle.*` (key `/id`, on the bed's `ev.>` stream):
/// started by `ev.idle.started`, it publishes the command `ev.idle.wait` and
/// waits for `ev.idle.waited`.
pub const IDLE_SAGA: &str = r#"
[sagas.idle]
start = "ev.idle.started"
key = "id"
completed = "ev.idle.completed"
failed = "ev.idle.failed"

[[sagas.idle.steps]]
name = "wait"
command = "ev.idle.wait"
success = "ev.idle.waited"
"#;

/// `text` as a TOML basic string, quotes included, escaped as TOML requires.
pub fn toml_str(text: impl AsRef<str>) -> String {
    let mut quoted = String::from("\"");
    for c in text.as_ref().chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\t' => quoted.push_str("\\t"),
            '\r' => quoted.push_str("\\r"),
            c if c.is_control() => {
                write!(quoted, "\\u{:04X}", c as u32).expect("write to String");
            }
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// The 1-based line of `text` that starts with `marker` (what an error
/// about that line must name).
pub fn line_of(text: &str, marker: &str) -> usize {
    text.lines()
        .position(|line| line.starts_with(marker))
        .unwrap_or_else(|| panic!("no line starts with {marker:?}"))
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_str_escapes_what_toml_needs() {
        assert_eq!(toml_str("/tmp/a b"), r#""/tmp/a b""#);
        assert_eq!(toml_str(r#"say "hi"\"#), r#""say \"hi\"\\""#);
        assert_eq!(toml_str("a\nb\u{1}"), r#""a\nb\u0001""#);
    }
}
