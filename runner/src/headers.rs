//! Building NATS headers from values that came from events, handlers or the
//! config, without ever panicking or changing them. async-nats'
//! `HeaderMap::insert` and `append` assert that a `&str` or `String` header
//! name is printable ASCII without `:`, and turn each CR or LF of a string
//! value into a space (before 0.52 they asserted on those too: a correlation
//! id with a newline in it once killed a function's delivery task). Every
//! header jetrun builds goes through [`Put`], which refuses such a name or
//! value with an error instead (`runner/clippy.toml` forbids the raw calls
//! everywhere else).

use async_nats::{HeaderMap, HeaderName, HeaderValue};

/// A header value no header can carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("header {name} cannot carry {value:?}: a header value holds no CR or LF")]
pub(crate) struct BadHeader {
    pub(crate) name: String,
    pub(crate) value: String,
}

/// Whether nats-server acts on a header of this name (`Nats-Msg-Id`,
/// `Nats-Expected-*`, `Nats-Batch-*`, `Nats-Schedule*`, `Nats-TTL`,
/// `Nats-Rollup`, ...): copied from one message onto another (a dead letter,
/// a replay) it would make the publish fail, or do to the new message's
/// stream what the original asked of its own. Such headers are never copied.
pub(crate) fn is_server_directive(name: &str) -> bool {
    name.get(..5)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("nats-"))
}

/// A header value from text; refused when it holds CR or LF.
pub(crate) fn value(name: &HeaderName, text: &str) -> Result<HeaderValue, BadHeader> {
    text.parse().map_err(|_| BadHeader {
        name: name.to_string(),
        value: text.to_string(),
    })
}

/// A header name from text (`ce-<extension>`, say); refused when it is not
/// printable ASCII without `:`.
pub(crate) fn name(text: &str) -> Result<HeaderName, BadHeader> {
    text.parse().map_err(|_| BadHeader {
        name: text.to_string(),
        value: String::new(),
    })
}

/// Setting headers without a panic.
pub(crate) trait Put {
    /// Sets `name` to `text`, replacing what it held.
    fn put(&mut self, name: HeaderName, text: &str) -> Result<(), BadHeader>;
    /// Sets `name` to a number.
    fn put_number(&mut self, name: HeaderName, number: u64);
    /// Sets `name` to a value already checked.
    fn set(&mut self, name: HeaderName, value: HeaderValue);
    /// Adds a value already checked to `name`.
    fn add(&mut self, name: HeaderName, value: HeaderValue);
}

// The one place the asserting calls are made, with arguments already typed.
#[allow(clippy::disallowed_methods)]
impl Put for HeaderMap {
    fn put(&mut self, name: HeaderName, text: &str) -> Result<(), BadHeader> {
        let value = value(&name, text)?;
        self.insert(name, value);
        Ok(())
    }

    fn put_number(&mut self, name: HeaderName, number: u64) {
        self.insert(name, HeaderValue::from(number));
    }

    fn set(&mut self, name: HeaderName, value: HeaderValue) {
        self.insert(name, value);
    }

    fn add(&mut self, name: HeaderName, value: HeaderValue) {
        self.append(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: HeaderName = HeaderName::from_static("ce-id");

    #[test]
    fn a_value_with_cr_or_lf_is_refused_not_a_panic() {
        let mut headers = HeaderMap::new();
        assert_eq!(headers.put(ID, "e-1"), Ok(()));
        for bad in ["a\nb", "a\rb", "\r\n"] {
            let err = headers.put(ID, bad).unwrap_err();
            assert_eq!(err.name, "ce-id");
            assert!(err.to_string().contains("holds no CR or LF"), "{err}");
        }
        assert_eq!(headers.get("ce-id").map(|v| v.as_str()), Some("e-1"));
        headers.put_number(HeaderName::from_static("Jetrun-Attempts"), 3);
        assert_eq!(
            headers.get("Jetrun-Attempts").map(|v| v.as_str()),
            Some("3")
        );
    }

    #[test]
    fn a_name_must_be_printable_ascii_without_colon() {
        assert!(name("ce-tenant").is_ok());
        for bad in ["bad name", "a:b", "näme", "a\nb"] {
            assert!(name(bad).is_err(), "{bad:?}");
        }
    }

    /// The asserting constructors have no caller outside tests; `insert` and
    /// `append` are caught by clippy (`runner/clippy.toml`), these by a look
    /// at the source.
    #[test]
    fn no_asserting_header_constructor_outside_tests() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut offenders = Vec::new();
        let mut dirs = vec![src];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                for needle in [
                    " HeaderValue::from(",
                    "(HeaderValue::from(",
                    " HeaderName::from(",
                    "(HeaderName::from(",
                    "into_header_value(",
                    "into_header_name(",
                ] {
                    if code.contains(needle) && !path.ends_with("headers.rs") {
                        offenders.push(format!("{}: {needle}", path.display()));
                    }
                }
            }
        }
        assert!(offenders.is_empty(), "{offenders:#?}");
    }
}
