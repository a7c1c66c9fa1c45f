//! The JSON exec functions speak: `{"emit": [{"type", "data", "subject"?}]}`
//! on stdout (per event; HTTP functions may reply with it too) and
//! `{"id", "ok", "emit", "result", "error", "retryable"}` replies (worker
//! mode), each echoing the `id` of the request it answers. A function that
//! answers (request, aggregate, projection) writes its result as its whole
//! stdout, or as `result` in a worker reply.

use jetrun_functions::{Emit, Failure, Output as Done};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmitJson {
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    data: Value,
    subject: Option<String>,
}

#[derive(Deserialize)]
struct Output {
    #[serde(default)]
    emit: Vec<EmitJson>,
}

#[derive(Deserialize)]
struct WorkerReply {
    /// The `id` of the request it answers.
    id: Option<u64>,
    ok: bool,
    #[serde(default)]
    emit: Vec<EmitJson>,
    /// What a function that answers returns.
    result: Option<Value>,
    error: Option<String>,
    #[serde(default = "yes")]
    retryable: bool,
}

fn yes() -> bool {
    true
}

fn emits(list: Vec<EmitJson>) -> Vec<Emit> {
    list.into_iter()
        .map(|e| Emit {
            event_type: e.event_type,
            subject: e.subject,
            data: e.data,
        })
        .collect()
}

/// A per-event process's stdout: empty, or `{"emit": [...]}`. Anything else is
/// a permanent failure: the same input would give the same output.
pub(super) fn parse_stdout(stdout: &[u8]) -> Result<Vec<Emit>, Failure> {
    if stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    parse_emit_list(stdout).map_err(|err| {
        Failure::permanent(format!(
            "stdout is not {{\"emit\": [{{\"type\": ..., \"data\": ...}}]}}: {err}"
        ))
    })
}

/// `{"emit": [{"type", "data", "subject"?}]}`, as a per-event process's
/// stdout and an HTTP function's reply carry it.
pub(super) fn parse_emit_list(json: &[u8]) -> Result<Vec<Emit>, serde_json::Error> {
    serde_json::from_slice::<Output>(json).map(|out| emits(out.emit))
}

/// Why a line from a worker is not the reply it was asked for: the worker
/// cannot be trusted with the next request (its replies may be shifted), so
/// it is replaced and the event tried again.
#[derive(Debug, PartialEq, thiserror::Error)]
pub(super) enum NotTheReply {
    #[error(
        "wrote a line that is not a reply ({{\"id\": <the request's id>, \"ok\": true|false, ...}}): \
         {why}: {line:?}"
    )]
    Garbage { why: String, line: String },
    #[error("answered request {got:?}, not request {want} (a reply must echo its request's id)")]
    WrongId { got: Option<u64>, want: u64 },
}

/// The reply to request `id` in one worker line (UTF-8 JSON, without its
/// `\n`): the outcome it says, or why the line is not that reply.
pub(super) fn parse_reply(line: &[u8], id: u64) -> Result<Result<Done, Failure>, NotTheReply> {
    let reply: WorkerReply = serde_json::from_slice(line).map_err(|err| NotTheReply::Garbage {
        why: err.to_string(),
        line: truncate(&String::from_utf8_lossy(line), 200).to_string(),
    })?;
    if reply.id != Some(id) {
        return Err(NotTheReply::WrongId {
            got: reply.id,
            want: id,
        });
    }
    Ok(outcome(reply))
}

fn outcome(reply: WorkerReply) -> Result<Done, Failure> {
    if reply.ok {
        return Ok(Done {
            emits: emits(reply.emit),
            result: reply
                .result
                .map(|value| serde_json::to_vec(&value).unwrap_or_default().into()),
        });
    }
    let message = reply
        .error
        .unwrap_or_else(|| "worker said ok: false".into());
    Err(if reply.retryable {
        Failure::retryable(message)
    } else {
        Failure::permanent(message)
    })
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetrun_functions::FailureKind;

    #[test]
    fn stdout_may_be_empty_or_an_emit_list() {
        assert_eq!(parse_stdout(b"  \n").unwrap(), vec![]);
        let out =
            parse_stdout(br#"{"emit":[{"type":"order.shipped","data":{"order_id":1}}]}"#).unwrap();
        assert_eq!(
            out,
            vec![Emit::new(
                "order.shipped",
                serde_json::json!({"order_id": 1})
            )]
        );
        assert!(parse_stdout(b"hello").unwrap_err().is_permanent());
    }

    #[test]
    fn worker_replies_map_to_outcomes() {
        let reply = |line: &[u8]| parse_reply(line, 7).unwrap();
        assert_eq!(reply(br#"{"id":7,"ok":true}"#).unwrap(), Done::default());
        let answered = reply(br#"{"id":7,"ok":true,"result":{"version":3}}"#).unwrap();
        assert_eq!(answered.result.as_deref(), Some(&br#"{"version":3}"#[..]));
        let retry = reply(br#"{"id":7,"ok":false,"error":"db down"}"#).unwrap_err();
        assert_eq!(
            (retry.kind, retry.message.as_str()),
            (FailureKind::Retryable, "db down")
        );
        let permanent =
            reply(br#"{"id":7,"ok":false,"error":"bad","retryable":false}"#).unwrap_err();
        assert!(permanent.is_permanent());
    }

    #[test]
    fn a_line_that_is_not_the_reply_is_never_paired_with_the_request() {
        assert!(matches!(
            parse_reply(b"debug: got an order", 7),
            Err(NotTheReply::Garbage { .. })
        ));
        assert!(
            matches!(
                parse_reply(b"{\"id\":7,\"ok\":true,\"emit\":[{\"type\":\"a\xff\"}]}", 7),
                Err(NotTheReply::Garbage { .. })
            ),
            "a reply that is not UTF-8 is refused, not mangled"
        );
        assert_eq!(
            parse_reply(br#"{"id":6,"ok":true}"#, 7).unwrap_err(),
            NotTheReply::WrongId {
                got: Some(6),
                want: 7
            }
        );
        assert_eq!(
            parse_reply(br#"{"ok":true}"#, 7).unwrap_err(),
            NotTheReply::WrongId { got: None, want: 7 }
        );
    }
}
