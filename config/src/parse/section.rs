//! The walk over the parsed TOML document: a [`Section`] is one table at a
//! known key path, a [`Field`] one value in it. Reading a field checks its
//! type, replaces `${VAR}`s and records any error, with its path and line, in
//! the [`Ctx`]; a section reports the keys nobody asked for when finished.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use crate::error::ConfigError;
use crate::vars;

/// The marker of a value that could not be read: its error is already in the
/// [`Ctx`], so callers only skip what depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Reported;

/// The result of reading a value.
pub(super) type Read<T> = Result<T, Reported>;

/// The wording of every duration error.
pub(super) const DURATION: &str = "a duration like 250ms, 30s, 5m or 7d";

/// What a parse carries along: the text (for line numbers), the environment
/// (for `${VAR}`) and the errors found so far.
pub(super) struct Ctx<'t> {
    text: &'t str,
    env: &'t BTreeMap<String, String>,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
}

impl<'t> Ctx<'t> {
    pub(super) fn new(text: &'t str, env: &'t BTreeMap<String, String>) -> Self {
        Ctx {
            text,
            env,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// The environment map `${VAR}` and `JETRUN_NATS_URL` are read from.
    pub(super) fn env(&self) -> &'t BTreeMap<String, String> {
        self.env
    }

    /// The 1-based line holding byte `span.start`.
    pub(super) fn line(&self, span: &Range<usize>) -> usize {
        line_of(self.text, span.start)
    }

    /// Records an error about `path`, on the line of `span` if there is one.
    pub(super) fn error(
        &mut self,
        path: impl Into<String>,
        span: Option<&Range<usize>>,
        message: impl Into<String>,
    ) -> Reported {
        let line = span.map(|span| self.line(span));
        self.errors.push(ConfigError {
            path: path.into(),
            line,
            message: message.into(),
        });
        Reported
    }

    /// Records a warning: the file is valid, but likely not what is meant.
    pub(super) fn warn(
        &mut self,
        path: impl Into<String>,
        span: Option<&Range<usize>>,
        message: impl Into<String>,
    ) {
        let line = span.map(|span| self.line(span));
        self.warnings.push(ConfigError {
            path: path.into(),
            line,
            message: message.into(),
        });
    }

    /// The warnings, in the order of their lines.
    pub(super) fn take_warnings(&mut self) -> Vec<ConfigError> {
        let mut warnings = std::mem::take(&mut self.warnings);
        warnings.sort_by_key(|w| w.line.unwrap_or(usize::MAX));
        warnings
    }

    pub(super) fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// The errors, in the order of their lines (those without a line last).
    pub(super) fn into_errors(mut self) -> Vec<ConfigError> {
        self.errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        self.errors
    }
}

/// The 1-based line holding byte `offset` of `text`.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// `parent.key`, quoting `key` when it is not a bare TOML key.
pub(super) fn join(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// One table of the document at a known key path, with the keys it accepts.
pub(super) struct Section<'a, 'i> {
    path: String,
    /// `None` when the table is absent from the file: it reads as empty.
    table: Option<&'a DeTable<'i>>,
    span: Option<Range<usize>>,
    keys: &'static [&'static str],
}

impl<'a, 'i> Section<'a, 'i> {
    /// The document itself.
    pub(super) fn root(table: &'a DeTable<'i>, keys: &'static [&'static str]) -> Self {
        Section {
            path: String::new(),
            table: Some(table),
            span: None,
            keys,
        }
    }

    /// The table in `field`, or an error if it holds something else.
    pub(super) fn of(
        field: &Field<'a, 'i>,
        keys: &'static [&'static str],
        ctx: &mut Ctx<'_>,
    ) -> Read<Self> {
        match field.value.get_ref() {
            DeValue::Table(table) => Ok(Section {
                path: field.path.clone(),
                table: Some(table),
                span: Some(field.value.span()),
                keys,
            }),
            _ => Err(field.wrong(ctx, "a table")),
        }
    }

    /// The table in `field` when there is one, else an empty table at `path`.
    pub(super) fn optional(
        path: &str,
        field: Option<&Field<'a, 'i>>,
        keys: &'static [&'static str],
        ctx: &mut Ctx<'_>,
    ) -> Read<Self> {
        match field {
            Some(field) => Section::of(field, keys, ctx),
            None => Ok(Section {
                path: path.to_owned(),
                table: None,
                span: None,
                keys,
            }),
        }
    }

    pub(super) fn path(&self) -> &str {
        &self.path
    }

    /// Where the table starts (its `[header]`), when it is in the file.
    pub(super) fn span(&self) -> Option<&Range<usize>> {
        self.span.as_ref()
    }

    /// The path of `key` in this table.
    pub(super) fn key_path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The value of `key`, if the file sets it.
    pub(super) fn field(&self, key: &str) -> Option<Field<'a, 'i>> {
        debug_assert!(self.keys.contains(&key), "{key} is not declared");
        let (k, value) = self.table?.get_key_value(key)?;
        Some(Field {
            path: self.key_path(key),
            key_span: Some(k.span()),
            value,
        })
    }

    /// `read` applied to the value of `key`, if the file sets it.
    pub(super) fn read<T>(
        &self,
        ctx: &mut Ctx<'_>,
        key: &str,
        read: impl FnOnce(&Field<'a, 'i>, &mut Ctx<'_>) -> Read<T>,
    ) -> Read<Option<T>> {
        self.field(key).map(|field| read(&field, ctx)).transpose()
    }

    /// Every entry, for tables whose keys are names (`[streams.*]`, `env`).
    pub(super) fn entries(&self) -> Vec<(&'a str, Field<'a, 'i>)> {
        let Some(table) = self.table else {
            return Vec::new();
        };
        table
            .iter()
            .map(|(key, value)| {
                let name: &'a str = key.get_ref();
                let field = Field {
                    path: self.key_path(name),
                    key_span: Some(key.span()),
                    value,
                };
                (name, field)
            })
            .collect()
    }

    /// Reports every key of the table that is not one of its known keys.
    pub(super) fn finish(&self, ctx: &mut Ctx<'_>) {
        self.finish_pointing(ctx, &[], "");
    }

    /// As [`Section::finish`], but a key of `elsewhere` (one that belongs in
    /// another table) is reported as `{path} {elsewhere_why}`.
    pub(super) fn finish_pointing(
        &self,
        ctx: &mut Ctx<'_>,
        elsewhere: &[&str],
        elsewhere_why: &str,
    ) {
        let Some(table) = self.table else {
            return;
        };
        for key in table.keys() {
            let name: &str = key.get_ref().as_ref();
            if self.keys.contains(&name) {
                continue;
            }
            let message = if elsewhere.contains(&name) {
                elsewhere_why.to_owned()
            } else {
                format!(
                    "is not a known key; expected one of: {}",
                    self.keys.join(", ")
                )
            };
            ctx.error(self.key_path(name), Some(&key.span()), message);
        }
    }
}

/// One value of the document at a known key path.
pub(super) struct Field<'a, 'i> {
    pub(super) path: String,
    /// `None` for an element of a list.
    pub(super) key_span: Option<Range<usize>>,
    pub(super) value: &'a Spanned<DeValue<'i>>,
}

impl<'a, 'i> Field<'a, 'i> {
    pub(super) fn span(&self) -> Range<usize> {
        self.value.span()
    }

    /// Records `"{path} {message}"` on the value's line.
    pub(super) fn error(&self, ctx: &mut Ctx<'_>, message: impl Into<String>) -> Reported {
        ctx.error(self.path.clone(), Some(&self.span()), message)
    }

    /// Records `"{path} must be {expected}, got {value}"`.
    pub(super) fn wrong(&self, ctx: &mut Ctx<'_>, expected: &str) -> Reported {
        let got = shown(self.value.get_ref());
        self.error(ctx, format!("must be {expected}, got {got}"))
    }

    /// The elements of a list (each at this field's path), or `None` if the
    /// value is not a list.
    pub(super) fn elements(&self) -> Option<Vec<Field<'a, 'i>>> {
        let DeValue::Array(items) = self.value.get_ref() else {
            return None;
        };
        Some(
            items
                .iter()
                .map(|value| Field {
                    path: self.path.clone(),
                    key_span: None,
                    value,
                })
                .collect(),
        )
    }

    /// A string, `${VAR}`s replaced.
    pub(super) fn string(&self, ctx: &mut Ctx<'_>) -> Read<String> {
        self.string_or(ctx, "a string")
    }

    /// A string, `${VAR}`s replaced; `expected` words the type error.
    pub(super) fn string_or(&self, ctx: &mut Ctx<'_>, expected: &str) -> Read<String> {
        let Some(raw) = self.value.get_ref().as_str() else {
            return Err(self.wrong(ctx, expected));
        };
        match vars::substitute(raw, ctx.env()) {
            Ok(value) => Ok(value),
            Err(errors) => {
                for error in errors {
                    self.error(ctx, error.message(raw));
                }
                Err(Reported)
            }
        }
    }

    /// A string that is not empty.
    pub(super) fn non_empty_string(&self, ctx: &mut Ctx<'_>) -> Read<String> {
        let value = self.string_or(ctx, "a non-empty string")?;
        if value.is_empty() {
            return Err(self.wrong(ctx, "a non-empty string"));
        }
        Ok(value)
    }

    /// A non-empty list of strings, each with its span; `expected` words the
    /// type error (of the list or of an element).
    pub(super) fn strings(&self, ctx: &mut Ctx<'_>, expected: &str) -> Read<Vec<Spanned<String>>> {
        let Some(elements) = self.elements() else {
            return Err(self.wrong(ctx, expected));
        };
        if elements.is_empty() {
            return Err(self.wrong(ctx, expected));
        }
        let mut out = Vec::with_capacity(elements.len());
        let mut failed = false;
        for element in &elements {
            match element.string_or(ctx, expected) {
                Ok(value) => out.push(Spanned::new(element.span(), value)),
                Err(Reported) => failed = true,
            }
        }
        if failed {
            Err(Reported)
        } else {
            Ok(out)
        }
    }

    /// A table of strings (`env`, `headers`), `${VAR}`s replaced.
    pub(super) fn string_map(&self, ctx: &mut Ctx<'_>) -> Read<BTreeMap<String, String>> {
        let section = Section::of(self, &[], ctx)?;
        let mut out = BTreeMap::new();
        let mut failed = false;
        for (key, field) in section.entries() {
            match field.string(ctx) {
                Ok(value) => {
                    out.insert(key.to_owned(), value);
                }
                Err(Reported) => failed = true,
            }
        }
        if failed {
            Err(Reported)
        } else {
            Ok(out)
        }
    }

    /// `true` or `false`.
    pub(super) fn boolean(&self, ctx: &mut Ctx<'_>) -> Read<bool> {
        self.value
            .get_ref()
            .as_bool()
            .ok_or_else(|| self.wrong(ctx, "true or false"))
    }

    /// Any integer; `expected` words the type error.
    pub(super) fn integer(&self, ctx: &mut Ctx<'_>, expected: &str) -> Read<i64> {
        match self.value.get_ref() {
            DeValue::Integer(_) => self.deserialize(ctx, expected),
            _ => Err(self.wrong(ctx, expected)),
        }
    }

    /// An integer of at least 1.
    pub(super) fn positive(&self, ctx: &mut Ctx<'_>) -> Read<i64> {
        const EXPECTED: &str = "a positive integer";
        match self.integer(ctx, EXPECTED)? {
            n if n >= 1 => Ok(n),
            _ => Err(self.wrong(ctx, EXPECTED)),
        }
    }

    /// An integer of at least 1, as a count.
    pub(super) fn count(&self, ctx: &mut Ctx<'_>) -> Read<usize> {
        let n = self.positive(ctx)?;
        usize::try_from(n).map_err(|_| self.wrong(ctx, "a positive integer"))
    }

    /// A number, integer or float.
    pub(super) fn number(&self, ctx: &mut Ctx<'_>) -> Read<f64> {
        match self.value.get_ref() {
            DeValue::Integer(_) | DeValue::Float(_) => self.deserialize(ctx, "a number"),
            _ => Err(self.wrong(ctx, "a number")),
        }
    }

    /// A humantime duration (`250ms`, `30s`, `5m`, `7d`), zero included.
    pub(super) fn duration(&self, ctx: &mut Ctx<'_>) -> Read<Duration> {
        let text = self.string_or(ctx, DURATION)?;
        humantime::parse_duration(&text)
            .map_err(|_| self.error(ctx, format!("must be {DURATION}, got {text:?}")))
    }

    /// A humantime duration longer than zero.
    pub(super) fn nonzero_duration(&self, ctx: &mut Ctx<'_>) -> Read<Duration> {
        let duration = self.duration(ctx)?;
        if duration.is_zero() {
            let got = shown(self.value.get_ref());
            return Err(self.error(
                ctx,
                format!("must be a non-zero duration like 250ms, 30s, 5m or 7d, got {got}"),
            ));
        }
        Ok(duration)
    }

    /// One of a few strings, each standing for a value.
    pub(super) fn one_of<T: Copy>(&self, ctx: &mut Ctx<'_>, choices: &[(&str, T)]) -> Read<T> {
        let names: Vec<String> = choices
            .iter()
            .map(|(name, _)| format!("{name:?}"))
            .collect();
        let expected = match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            _ => names.join(""),
        };
        let text = self.string_or(ctx, &expected)?;
        choices
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, value)| *value)
            .ok_or_else(|| self.error(ctx, format!("must be {expected}, got {text:?}")))
    }

    /// The value as `T`, through serde; `expected` words the error.
    fn deserialize<T: DeserializeOwned>(&self, ctx: &mut Ctx<'_>, expected: &str) -> Read<T> {
        T::deserialize(ValueDeserializer::from(self.value.clone()))
            .map_err(|_| self.wrong(ctx, expected))
    }
}

/// A value as it reads in an error message: strings quoted, scalars as
/// written, lists and tables by kind.
fn shown(value: &DeValue<'_>) -> String {
    match value {
        DeValue::String(s) => format!("{:?}", s.as_ref()),
        DeValue::Integer(i) => i.to_string(),
        DeValue::Float(f) => f.to_string(),
        DeValue::Boolean(b) => b.to_string(),
        DeValue::Datetime(d) => d.to_string(),
        DeValue::Array(items) if items.is_empty() => "an empty list".to_owned(),
        DeValue::Array(_) => "a list".to_owned(),
        DeValue::Table(_) => "a table".to_owned(),
    }
}

/// `a`, `a and b`, `a, b and c`; `none` for no items.
pub(super) fn listed(items: &[&str]) -> String {
    match items.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        Some((last, _)) => (*last).to_owned(),
        None => "none".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_count_from_one() {
        let text = "a = 1\nb = 2\n\nc = 3";
        assert_eq!(line_of(text, 0), 1);
        assert_eq!(line_of(text, 6), 2);
        assert_eq!(line_of(text, text.len() - 1), 4);
        assert_eq!(line_of(text, 10_000), 4);
    }

    #[test]
    fn paths_quote_keys_that_are_not_bare() {
        assert_eq!(join("", "functions"), "functions");
        assert_eq!(
            join("functions", "reserve-stock"),
            "functions.reserve-stock"
        );
        assert_eq!(join("streams", "a.b"), "streams.\"a.b\"");
        assert_eq!(join("streams", "MY STREAM"), "streams.\"MY STREAM\"");
    }
}
