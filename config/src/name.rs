//! Names: which stream and durable consumer (function) names are valid, and
//! every name jetrun derives from the config (consumers, subjects, KV
//! buckets, the micro service), in one place so that the runner, the CLI and
//! the checks of `jetrun check` agree. Function names are kept to a portable
//! subset because they also end up in subjects (`dlq.<name>`), metric labels
//! and file names.

/// The NATS micro service request functions are endpoints of, and its queue group.
pub const SERVICE: &str = "jetrun";

/// The KV bucket naming, for each projection bucket a config names, the
/// bucket that holds its read model now (after `jetrun projection rebuild`).
pub const PROJECTION_POINTERS: &str = "jetrun_projections";

/// The KV bucket where each running replica of a function keeps its
/// heartbeat (`FUNCTION.REPLICA`), so replicas count each other without a
/// coordinator (a rate shared among them, keyed partitions rebalanced).
pub const REPLICAS: &str = "jetrun_replicas";

/// The KV bucket holding, for each function with `on_dead_letter = "park"`,
/// the keys parked behind a dead letter (`FUNCTION.KEY`, the key in
/// base64url), until `jetrun dlq replay` replays it.
pub const PARKED_KEYS: &str = "jetrun_parked";

/// The durable consumer of saga `saga` on each stream holding its inputs.
pub fn saga_consumer(saga: &str) -> String {
    format!("saga-{saga}")
}

/// The durable consumer of partition `index` (from 0) of a keyed function
/// whose own consumer name is `consumer`.
pub fn partition_consumer(consumer: &str, index: usize) -> String {
    format!("{consumer}-p{index}")
}

/// The stream jetrun keeps schedules and their ticks in (made with
/// `allow_msg_schedules`), unless `[schedules] stream` names another.
pub const SCHEDULES_STREAM: &str = "JETRUN_SCHEDULES";

/// The durable consumer (on the schedules stream) relaying delayed events
/// to their subjects, shared by every runner; also how its metrics and
/// `/readyz` name it, so no function may be named so.
pub const DELAYED_RELAY: &str = "jetrun-delayed";

/// The subject scheduled function `function`'s ticks are published on.
pub fn schedule_tick_subject(function: &str) -> String {
    format!("jetrun.schedule.{function}")
}

/// The subject holding scheduled function `function`'s schedule (the
/// message with the `Nats-Schedule` header), per `[service] name`, so that
/// two configs sharing a NATS account never touch each other's schedules.
pub fn schedule_holder_subject(service: &str, function: &str) -> String {
    format!("jetrun.schedules.{service}.{function}")
}

/// The KV bucket holding saga `saga`'s instances.
pub fn saga_bucket(saga: &str) -> String {
    format!("jetrun_saga_{saga}")
}

/// The KV bucket holding aggregate `aggregate`'s snapshots.
pub fn snapshot_bucket(aggregate: &str) -> String {
    format!("jetrun_snapshots_{aggregate}")
}

/// Whether `name` can name a JetStream stream: not empty, and no whitespace,
/// `.`, `*`, `>`, `/` or `\`.
pub(crate) fn is_stream_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || ".*>/\\".contains(c))
}

/// What a stream name must look like, as the end of a sentence.
pub(crate) const STREAM_NAME_RULE: &str =
    "it must not be empty nor contain whitespace, ., *, >, / or \\";

/// Whether `name` can name a function (and so its durable consumer): letters,
/// digits, `-` and `_`.
pub(crate) fn is_function_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names() {
        for ok in ["ORDERS", "orders-v2", "my_stream", "Ünïcode"] {
            assert!(is_stream_name(ok), "{ok}");
        }
        for bad in ["", "MY STREAM", "a.b", "a*", "a>", "a/b", "a\\b", "tab\t"] {
            assert!(!is_stream_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn function_names() {
        for ok in ["reserve-stock", "welcome_email", "v2"] {
            assert!(is_function_name(ok), "{ok}");
        }
        for bad in ["", "a.b", "a b", "a*", "é"] {
            assert!(!is_function_name(bad), "{bad:?}");
        }
    }
}
