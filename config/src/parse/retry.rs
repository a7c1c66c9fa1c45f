//! `retry` tables: read from `[defaults]` and each function, merged key by key
//! (function over `[defaults]` over the built-in defaults), then validated by
//! [`RetryPolicy::new`], whose error names the key at fault.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use super::section::{join, Ctx, Field, Read, Section};
use crate::retry::{InvalidRetry, RetryPolicy};

pub(super) const RETRY_KEYS: &[&str] = &[
    "max_attempts",
    "initial_delay",
    "multiplier",
    "max_delay",
    "jitter",
];

/// The values a policy is built from, before validation.
#[derive(Debug, Clone, Copy)]
struct Values {
    max_attempts: i64,
    initial_delay: Duration,
    multiplier: f64,
    max_delay: Duration,
    jitter: f64,
}

impl Default for Values {
    fn default() -> Self {
        let policy = RetryPolicy::default();
        Values {
            max_attempts: i64::from(policy.max_attempts()),
            initial_delay: policy.initial_delay(),
            multiplier: policy.multiplier(),
            max_delay: policy.max_delay(),
            jitter: policy.jitter(),
        }
    }
}

impl Values {
    fn build(self) -> Result<RetryPolicy, InvalidRetry> {
        RetryPolicy::new(
            self.max_attempts,
            self.initial_delay,
            self.multiplier,
            self.max_delay,
            self.jitter,
        )
    }
}

/// The keys one `retry` table sets, and where.
struct Table {
    path: String,
    span: Range<usize>,
    key_spans: BTreeMap<&'static str, Range<usize>>,
    max_attempts: Option<i64>,
    initial_delay: Option<Duration>,
    multiplier: Option<f64>,
    max_delay: Option<Duration>,
    jitter: Option<f64>,
}

impl Table {
    fn read(field: &Field<'_, '_>, ctx: &mut Ctx<'_>) -> Read<Table> {
        let section = Section::of(field, RETRY_KEYS, ctx)?;
        let max_attempts = section.read(ctx, "max_attempts", |f, ctx| {
            f.integer(ctx, "a positive integer")
        });
        let initial_delay = section.read(ctx, "initial_delay", Field::duration);
        let multiplier = section.read(ctx, "multiplier", Field::number);
        let max_delay = section.read(ctx, "max_delay", Field::duration);
        let jitter = section.read(ctx, "jitter", Field::number);
        section.finish(ctx);
        let key_spans = RETRY_KEYS
            .iter()
            .filter_map(|key| Some((*key, section.field(key)?.span())))
            .collect();
        Ok(Table {
            path: field.path.clone(),
            span: field.span(),
            key_spans,
            max_attempts: max_attempts?,
            initial_delay: initial_delay?,
            multiplier: multiplier?,
            max_delay: max_delay?,
            jitter: jitter?,
        })
    }

    /// `values` with the keys this table sets replaced.
    fn over(&self, values: Values) -> Values {
        Values {
            max_attempts: self.max_attempts.unwrap_or(values.max_attempts),
            initial_delay: self.initial_delay.unwrap_or(values.initial_delay),
            multiplier: self.multiplier.unwrap_or(values.multiplier),
            max_delay: self.max_delay.unwrap_or(values.max_delay),
            jitter: self.jitter.unwrap_or(values.jitter),
        }
    }

    fn sets(&self, key: &str) -> bool {
        self.key_spans.contains_key(key)
    }

    /// Records `error` at `{path}.{key}`, on the key's line if this table sets
    /// it, else on the table's.
    fn report(&self, ctx: &mut Ctx<'_>, error: &InvalidRetry) {
        let key = error.key();
        let text = error.to_string();
        let message = text
            .strip_prefix(key)
            .map_or(text.as_str(), str::trim_start);
        let span = self.key_spans.get(key).unwrap_or(&self.span);
        ctx.error(join(&self.path, key), Some(span), message);
    }
}

/// What functions inherit from `[defaults] retry`.
pub(super) struct Inherited {
    /// `None` when `[defaults] retry` has a key that could not be read.
    values: Option<Values>,
    /// `None` when those values make no valid policy (already reported).
    policy: Option<RetryPolicy>,
}

impl Inherited {
    /// What functions inherit when `[defaults]` itself could not be read.
    pub(super) fn unknown() -> Self {
        Inherited {
            values: None,
            policy: None,
        }
    }
}

/// `[defaults] retry`, over the built-in defaults.
pub(super) fn defaults(ctx: &mut Ctx<'_>, section: &Section<'_, '_>) -> Inherited {
    match section.read(ctx, "retry", Table::read) {
        Err(_) => Inherited::unknown(),
        Ok(None) => Inherited {
            values: Some(Values::default()),
            policy: Some(RetryPolicy::default()),
        },
        Ok(Some(table)) => {
            let values = table.over(Values::default());
            let policy = values
                .build()
                .map_err(|error| table.report(ctx, &error))
                .ok();
            Inherited {
                values: Some(values),
                policy,
            }
        }
    }
}

/// A function's policy: its `retry` table over what it inherits, or what it
/// inherits when it has none. `None` when an error was reported.
pub(super) fn function(
    ctx: &mut Ctx<'_>,
    section: &Section<'_, '_>,
    inherited: &Inherited,
) -> Option<RetryPolicy> {
    let table = section.read(ctx, "retry", Table::read).ok()?;
    let Some(table) = table else {
        return inherited.policy;
    };
    match table.over(inherited.values?).build() {
        Ok(policy) => Some(policy),
        Err(error) => {
            // A bad inherited value was reported at [defaults] already.
            if inherited.policy.is_some() || table.sets(error.key()) {
                table.report(ctx, &error);
            }
            None
        }
    }
}
