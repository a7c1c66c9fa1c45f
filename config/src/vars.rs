//! `${VAR}` in string values: replaced from the environment map at load time.
//! There is no escape and no default syntax; a `$` not followed by `{` is kept
//! as written.

use std::collections::BTreeMap;

/// Why a string's `${...}` references could not all be replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VarError {
    /// `${NAME}` where `NAME` is not in the environment.
    Missing(String),
    /// `${` with no `}` after it.
    Unclosed,
    /// `${...}` whose inside is not a variable name (letters, digits, `_`).
    BadName(String),
}

impl VarError {
    /// The error as the rest of a sentence about the value `raw`.
    pub(crate) fn message(&self, raw: &str) -> String {
        match self {
            VarError::Missing(name) => {
                format!("{raw:?} refers to environment variable {name}, which is not set")
            }
            VarError::Unclosed => format!("{raw:?} has a ${{ with no closing }}"),
            VarError::BadName(name) => format!(
                "{raw:?} has ${{{name}}}, which is not an environment variable name \
                 (letters, digits and _)"
            ),
        }
    }
}

/// `value` with every `${NAME}` replaced by `env[NAME]`, or every reference
/// that could not be replaced.
pub(crate) fn substitute(
    value: &str,
    env: &BTreeMap<String, String>,
) -> Result<String, Vec<VarError>> {
    let mut out = String::with_capacity(value.len());
    let mut errors = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            errors.push(VarError::Unclosed);
            rest = "";
            break;
        };
        let name = &after[..end];
        if !is_var_name(name) {
            errors.push(VarError::BadName(name.to_owned()));
        } else if let Some(found) = env.get(name) {
            out.push_str(found);
        } else {
            errors.push(VarError::Missing(name.to_owned()));
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn is_var_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        [("HOST", "api.internal"), ("TOKEN", "s3cret"), ("EMPTY", "")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn replaces_every_reference() {
        assert_eq!(
            substitute("https://${HOST}/hook?t=${TOKEN}", &env()),
            Ok("https://api.internal/hook?t=s3cret".to_owned())
        );
        assert_eq!(substitute("a${EMPTY}b", &env()), Ok("ab".to_owned()));
    }

    #[test]
    fn leaves_plain_dollars_alone() {
        assert_eq!(
            substitute("$5 and $HOST", &env()),
            Ok("$5 and $HOST".to_owned())
        );
    }

    #[test]
    fn reports_every_missing_variable() {
        assert_eq!(
            substitute("${NOPE}:${HOST}:${ALSO_NOPE}", &env()),
            Err(vec![
                VarError::Missing("NOPE".into()),
                VarError::Missing("ALSO_NOPE".into())
            ])
        );
    }

    #[test]
    fn reports_malformed_references() {
        assert_eq!(substitute("x${HOST", &env()), Err(vec![VarError::Unclosed]));
        assert_eq!(
            substitute("${}${A-B}", &env()),
            Err(vec![
                VarError::BadName("".into()),
                VarError::BadName("A-B".into())
            ])
        );
    }

    #[test]
    fn messages_quote_the_value_as_written() {
        assert_eq!(
            VarError::Missing("NOPE".into()).message("${NOPE}"),
            "\"${NOPE}\" refers to environment variable NOPE, which is not set"
        );
    }
}
