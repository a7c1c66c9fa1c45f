//! The JSON exec functions speak: `{"emit": [{"type", "data", "subject"?,
//! "delay"? | "at"?}]}` on stdout (per event; HTTP functions may reply with it too) and
//! `{"id", "ok", "emit", "result", "error", "retryable"}` replies (worker
//! mode), each echoing the `id` of the request it answers. A function that
//! answers (request, aggregate, projection) writes its result as its whole
//! stdout, or as `result` in a worker reply.
//!
//! A batch (`batch` in the config) is answered per item, by every handler
//! kind alike: `{"results": [{"id", "ok", "emit"}, {"id", "error",
//! "permanent"}]}`, where `id` is the item's event `id` (or, from a worker,
//! its request's numeric `id`); an item no result names succeeded.

use jetrun_functions::{Emit, Failure, Later, Outcome, Output as Done};
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
    /// A delayed event: stored this long after the call (`"10m"`).
    delay: Option<String>,
    /// A delayed event: stored at this RFC 3339 time.
    at: Option<String>,
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

/// The emits of a reply; a `delay` or `at` that cannot be read says why.
fn emits(list: Vec<EmitJson>) -> Result<Vec<Emit>, String> {
    list.into_iter()
        .map(|e| {
            Ok(Emit {
                later: later(&e.event_type, e.delay.as_deref(), e.at.as_deref())?,
                event_type: e.event_type,
                subject: e.subject,
                data: e.data,
            })
        })
        .collect()
}

/// An emit's `delay` (a duration: `"10m"`, `"1h30m"`) or `at` (RFC 3339:
/// `"2026-12-24T18:00:00Z"`), at most one of them.
fn later(event_type: &str, delay: Option<&str>, at: Option<&str>) -> Result<Option<Later>, String> {
    match (delay, at) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(format!(
            "emit {event_type} has both \"delay\" and \"at\"; give one"
        )),
        (Some(delay), None) => humantime::parse_duration(delay)
            .map(|delay| Some(Later::After(delay)))
            .map_err(|err| {
                format!(
                    "emit {event_type} has \"delay\": {delay:?}, which is not a duration like \"10m\" \
                     or \"1h30m\" ({err})"
                )
            }),
        (None, Some(at)) => chrono::DateTime::parse_from_rfc3339(at)
            .map(|at| Some(Later::At(at.into())))
            .map_err(|err| {
                format!(
                    "emit {event_type} has \"at\": {at:?}, which is not an RFC 3339 time like \
                     \"2026-12-24T18:00:00Z\" ({err})"
                )
            }),
    }
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

/// `{"emit": [{"type", "data", "subject"?, "delay"? | "at"?}]}`, as a
/// per-event process's stdout and an HTTP function's reply carry it.
pub(super) fn parse_emit_list(json: &[u8]) -> Result<Vec<Emit>, String> {
    let out = serde_json::from_slice::<Output>(json).map_err(|err| err.to_string())?;
    emits(out.emit)
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
            emits: emits(reply.emit).map_err(Failure::permanent)?,
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

/// How a batch answer names an item: its event's `id`, and in worker mode
/// also the numeric `id` of its request.
pub(super) struct ItemId<'a> {
    pub(super) event: &'a str,
    pub(super) request: Option<u64>,
}

#[derive(Deserialize)]
struct BatchAnswer {
    results: Vec<ItemResult>,
}

#[derive(Deserialize)]
struct ItemResult {
    /// The event's id (a string) or a worker request's id (a number).
    id: Value,
    ok: Option<bool>,
    #[serde(default)]
    emit: Vec<EmitJson>,
    error: Option<String>,
    #[serde(default)]
    permanent: bool,
}

/// The outcome of each item of a batch from the handler's answer: one per
/// item of `ids`, in order. Whitespace alone says every item succeeded. A
/// result whose `id` names no item, or an item already answered, is left
/// out with a warning. `Err`: the answer is not `{"results": [...]}` (why).
pub(super) fn parse_batch_answer(
    function: &str,
    answer: &[u8],
    ids: &[ItemId<'_>],
) -> Result<Vec<Outcome>, String> {
    let mut outcomes: Vec<Option<Outcome>> = vec![None; ids.len()];
    if !answer.iter().all(u8::is_ascii_whitespace) {
        let answer: BatchAnswer = serde_json::from_slice(answer).map_err(|err| err.to_string())?;
        for result in answer.results {
            let named: Vec<usize> = ids
                .iter()
                .enumerate()
                .filter(|(_, item)| match &result.id {
                    Value::String(id) => id == item.event,
                    Value::Number(n) => n.as_u64().is_some_and(|n| item.request == Some(n)),
                    _ => false,
                })
                .map(|(i, _)| i)
                .collect();
            if named.is_empty() {
                tracing::warn!(
                    %function,
                    id = %truncate(&result.id.to_string(), 200),
                    "The batch answer names an item that is not in the batch; ignoring it."
                );
                continue;
            }
            let outcome = item_outcome(result);
            for i in named {
                if outcomes[i].is_some() {
                    tracing::warn!(
                        %function,
                        id = %ids[i].event,
                        "The batch answer names an item twice; the first result counts."
                    );
                } else {
                    outcomes[i] = Some(outcome.clone());
                }
            }
        }
    }
    Ok(outcomes
        .into_iter()
        .map(|outcome| outcome.unwrap_or_else(|| Ok(Done::default())))
        .collect())
}

/// One item's result: failed when it has an `error` or says `"ok": false`.
fn item_outcome(result: ItemResult) -> Outcome {
    if result.error.is_none() && result.ok != Some(false) {
        return emits(result.emit)
            .map(Done::from)
            .map_err(Failure::permanent);
    }
    let message = result
        .error
        .unwrap_or_else(|| "the batch answer said ok: false".into());
    Err(if result.permanent {
        Failure::permanent(message)
    } else {
        Failure::retryable(message)
    })
}

/// The same failure for every item of a batch of `len`: a whole call failed.
pub(super) fn every_item(failure: Failure, len: usize) -> Vec<Outcome> {
    vec![Err(failure); len]
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
    fn an_emit_may_wait_for_a_delay_or_a_time() {
        use std::time::{Duration, UNIX_EPOCH};
        let out = parse_stdout(
            br#"{"emit":[{"type":"a","delay":"1h30m"},{"type":"b","at":"2026-12-24T19:00:00+01:00"},{"type":"c"}]}"#,
        )
        .unwrap();
        assert_eq!(out[0].later, Some(Later::After(Duration::from_secs(5400))));
        assert_eq!(
            out[1].later,
            Some(Later::At(UNIX_EPOCH + Duration::from_secs(1_798_135_200)))
        );
        assert_eq!(out[2].later, None);
        for (bad, says) in [
            (
                r#"{"type":"a","delay":"soon"}"#,
                r#"emit a has "delay": "soon", which is not a duration"#,
            ),
            (
                r#"{"type":"a","at":"tomorrow"}"#,
                r#"emit a has "at": "tomorrow", which is not an RFC 3339 time"#,
            ),
            (
                r#"{"type":"a","delay":"1m","at":"2026-12-24T18:00:00Z"}"#,
                r#"emit a has both "delay" and "at""#,
            ),
        ] {
            let failure = parse_stdout(format!(r#"{{"emit":[{bad}]}}"#).as_bytes()).unwrap_err();
            assert!(failure.is_permanent());
            assert!(failure.message.contains(says), "{}", failure.message);
            let reply = format!(r#"{{"id":7,"ok":true,"emit":[{bad}]}}"#);
            let failure = parse_reply(reply.as_bytes(), 7).unwrap().unwrap_err();
            assert!(
                failure.is_permanent() && failure.message.contains(says),
                "{failure:?}"
            );
        }
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
    fn a_batch_answer_is_read_per_item() {
        let ids = [
            ItemId {
                event: "a",
                request: Some(1),
            },
            ItemId {
                event: "b",
                request: Some(2),
            },
            ItemId {
                event: "c",
                request: Some(3),
            },
            ItemId {
                event: "d",
                request: Some(4),
            },
        ];
        let answer = br#"{"results": [
            {"id": "a", "ok": true, "emit": [{"type": "x.done", "data": 1}]},
            {"id": "b", "error": "bad row", "permanent": true},
            {"id": 3, "ok": false, "error": "db busy"},
            {"id": "zz", "error": "not in the batch"},
            {"id": "a", "error": "a second answer"}
        ]}"#;
        let outcomes = parse_batch_answer("f", answer, &ids).unwrap();
        assert_eq!(
            outcomes[0],
            Ok(vec![Emit::new("x.done", serde_json::json!(1))].into())
        );
        assert_eq!(outcomes[1], Err(Failure::permanent("bad row")));
        assert_eq!(outcomes[2], Err(Failure::retryable("db busy")));
        assert_eq!(outcomes[3], Ok(Done::default()), "not named: succeeded");
    }

    #[test]
    fn an_empty_batch_answer_is_all_ok_and_garbage_is_refused() {
        let ids = [ItemId {
            event: "a",
            request: None,
        }];
        assert_eq!(
            parse_batch_answer("f", b" \n", &ids).unwrap(),
            vec![Ok(Done::default())]
        );
        let failed = parse_batch_answer("f", br#"{"results":[{"id":"a","ok":false}]}"#, &ids);
        assert_eq!(
            failed.unwrap(),
            vec![Err(Failure::retryable("the batch answer said ok: false"))]
        );
        assert!(parse_batch_answer("f", b"hello", &ids).is_err());
        assert!(parse_batch_answer("f", br#"{"emit": []}"#, &ids).is_err());
        assert!(parse_batch_answer(
            "f",
            br#"{"results":[{"id":"a","emit":[{"typo":1}]}]}"#,
            &ids
        )
        .is_err());
    }

    #[test]
    fn a_numeric_id_names_a_request_not_an_event() {
        let ids = [ItemId {
            event: "7",
            request: None,
        }];
        let outcomes =
            parse_batch_answer("f", br#"{"results":[{"id":7,"error":"x"}]}"#, &ids).unwrap();
        assert_eq!(outcomes, vec![Ok(Done::default())]);
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
