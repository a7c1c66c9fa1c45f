//! The dead letter of an event: its original body, byte for byte, and its
//! original headers plus the `Jetrun-*` ones saying where it came from and
//! why it failed; and its publish, which cuts a body too big for the
//! server's `max_payload` (the whole event stays in its own stream).

use std::time::SystemTime;

use async_nats::jetstream;
use async_nats::HeaderMap;
use bytes::Bytes;

use super::retry::Reason;
use crate::emit::{self, PublishError};

/// The most of an error message a dead letter carries.
const ERROR_LIMIT: usize = 1024;

/// Headers of the original that steer a JetStream publish: copied, they
/// would make the dead letter's own publish fail or misbehave.
fn is_publish_directive(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.starts_with("nats-expected-")
        || matches!(name.as_str(), "nats-msg-id" | "nats-rollup" | "nats-ttl")
}

pub(crate) struct DeadLetter<'a> {
    pub(crate) function: &'a str,
    pub(crate) reason: Reason,
    pub(crate) error: &'a str,
    pub(crate) attempts: u64,
    pub(crate) subject: &'a str,
    pub(crate) stream: &'a str,
    pub(crate) sequence: u64,
    pub(crate) failed_at: SystemTime,
}

impl DeadLetter<'_> {
    /// `Nats-Msg-Id` of the dead letter: a crash between its publish and the
    /// original's `+TERM` cannot make two.
    pub(crate) fn msg_id(&self) -> String {
        format!("{}:{}:{}", self.stream, self.sequence, self.function)
    }

    pub(crate) fn headers(&self, original: Option<&HeaderMap>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(original) = original {
            for (name, values) in original.iter() {
                if is_publish_directive(AsRef::<str>::as_ref(name)) {
                    continue;
                }
                for value in values {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
        headers.insert("Jetrun-Function", self.function);
        headers.insert("Jetrun-Reason", self.reason.as_str());
        headers.insert("Jetrun-Error", one_line(self.error, ERROR_LIMIT).as_str());
        headers.insert("Jetrun-Attempts", self.attempts.to_string().as_str());
        headers.insert("Jetrun-Original-Subject", self.subject);
        headers.insert("Jetrun-Original-Stream", self.stream);
        headers.insert(
            "Jetrun-Original-Sequence",
            self.sequence.to_string().as_str(),
        );
        headers.insert(
            "Jetrun-Failed-At",
            humantime::format_rfc3339_millis(self.failed_at)
                .to_string()
                .as_str(),
        );
        headers.insert("Nats-Msg-Id", self.msg_id().as_str());
        headers
    }
}

/// Publishes a dead letter to `subject` and waits for its stream's ack. A
/// dead letter too big for the server's max_payload (the original body plus
/// jetrun's headers) is published with the body cut to fit and
/// `Jetrun-Body-Truncated` set to the original length: the whole event stays
/// in its own stream at `Jetrun-Original-Sequence`.
pub(crate) async fn publish(
    js: &jetstream::Context,
    subject: &str,
    mut headers: HeaderMap,
    body: Bytes,
    letter: &DeadLetter<'_>,
) -> Result<(), PublishError> {
    match emit::publish(js, subject, headers.clone(), body.clone()).await {
        Ok(_) => Ok(()),
        Err(PublishError::TooBig { .. }) => {
            let room = js
                .client()
                .max_payload()
                .saturating_sub(headers_size(&headers) + 256);
            tracing::warn!(
                size = body.len(),
                kept = room,
                "The dead letter is bigger than the server's max_payload; cutting its body. \
                 The whole event stays in stream {} at sequence {}.",
                letter.stream,
                letter.sequence
            );
            headers.insert("Jetrun-Body-Truncated", body.len().to_string().as_str());
            let cut = body.slice(..room.min(body.len()));
            emit::publish(js, subject, headers, cut).await.map(|_| ())
        }
        Err(err) => Err(err),
    }
}

/// About what `headers` take on the wire.
fn headers_size(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, values)| {
            values
                .iter()
                .map(|v| AsRef::<str>::as_ref(name).len() + v.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum::<usize>()
        + 16
}

/// `text` on one line, cut to at most `limit` bytes on a character boundary.
fn one_line(text: &str, limit: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut end = flat.len().min(limit);
    while !flat.is_char_boundary(end) {
        end -= 1;
    }
    flat[..end].trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(error: &str) -> DeadLetter<'_> {
        DeadLetter {
            function: "reserve-stock",
            reason: Reason::Permanent,
            error,
            attempts: 1,
            subject: "order.placed",
            stream: "ORDERS",
            sequence: 7,
            failed_at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn keeps_original_headers_and_adds_jetrun_ones() {
        let mut original = HeaderMap::new();
        original.insert("X-Tenant", "acme");
        original.insert("Nats-Msg-Id", "publisher-id");
        original.insert("Nats-Expected-Stream", "ORDERS");
        let headers = letter("boom").headers(Some(&original));
        let get = |k: &str| headers.get(k).map(|v| v.as_str().to_string());
        assert_eq!(get("X-Tenant").as_deref(), Some("acme"));
        assert_eq!(get("Nats-Expected-Stream"), None);
        assert_eq!(
            get("Nats-Msg-Id").as_deref(),
            Some("ORDERS:7:reserve-stock")
        );
        assert_eq!(get("Jetrun-Reason").as_deref(), Some("permanent"));
        assert_eq!(get("Jetrun-Original-Sequence").as_deref(), Some("7"));
        assert_eq!(
            get("Jetrun-Failed-At").as_deref(),
            Some("1970-01-01T00:00:00.000Z")
        );
    }

    #[test]
    fn the_error_is_one_line_of_at_most_1_kib() {
        let long = format!("first\nsecond {}", "é".repeat(2000));
        let headers = letter(&long).headers(None);
        let error = headers.get("Jetrun-Error").unwrap().as_str().to_string();
        assert!(!error.contains('\n'));
        assert!(error.len() <= 1024);
        assert!(error.starts_with("first second"));
    }
}
