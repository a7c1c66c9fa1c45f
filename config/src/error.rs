//! What `parse` reports when a config file is not valid: every error of the
//! file, each naming the key path it is about and the line it is on.

use std::fmt;

/// One thing wrong with a config file.
///
/// Displayed as `{path} {message} (line {line})`, for example
/// `functions.thumbnail.retry.max_attempts must be at least 1, got 0 (line 14)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The dotted key path the error is about (`functions.thumbnail.timeout`);
    /// empty for a TOML syntax error.
    pub path: String,
    /// The 1-based line of the offending key or value, when there is one.
    pub line: Option<usize>,
    /// What is wrong, a sentence whose subject is `path`.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)?;
        } else {
            write!(f, "{} {}", self.path, self.message)?;
        }
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Every error found in a config file, in the order of their lines (errors
/// with no line last); never empty.
///
/// Displayed as one error per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_reads_path_message_line() {
        let error = ConfigError {
            path: "functions.x.timeout".into(),
            line: Some(9),
            message: "must be a duration like 250ms, 30s, 5m or 7d, got \"5 sec\"".into(),
        };
        assert_eq!(
            error.to_string(),
            "functions.x.timeout must be a duration like 250ms, 30s, 5m or 7d, got \"5 sec\" (line 9)"
        );
        let no_line = ConfigError {
            line: None,
            ..error
        };
        assert!(!no_line.to_string().contains("(line"));
    }

    #[test]
    fn errors_are_one_per_line() {
        let error = |path: &str| ConfigError {
            path: path.into(),
            line: None,
            message: "is wrong".into(),
        };
        let errors = ConfigErrors(vec![error("a"), error("b")]);
        assert_eq!(errors.to_string(), "a is wrong\nb is wrong");
    }
}
