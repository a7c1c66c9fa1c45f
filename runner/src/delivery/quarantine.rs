//! Messages the NATS client cannot read. async-nats 0.51 drops its whole
//! connection when a delivered message has a header value that is not UTF-8
//! (nats-server does not check header bytes), so such a message is never
//! handed to jetrun, is redelivered after every ack wait, drops the
//! connection again, and stalls its consumer for good.
//!
//! The monitor notices a consumer whose ack floor has not moved for longer
//! than the ack wait and looks at the next message through the stream's
//! message-get API, which returns headers base64-encoded. If its header
//! block is not UTF-8, the message is dead-lettered (body byte for byte,
//! headers as far as they can be read, the raw header block in
//! `Jetrun-Original-Headers-Base64`) and then deleted from its stream: the
//! only way to unstick a consumer that can never be handed the message.

use std::time::SystemTime;

use async_nats::HeaderMap;
use base64::prelude::{Engine, BASE64_STANDARD};
use serde::Deserialize;
use serde_json::json;

use super::dead_letter::DeadLetter;
use super::decision::Reason;
use super::Shared;

/// What the stream's message-get API answers.
#[derive(Deserialize)]
struct GetReply {
    message: Option<StoredMessage>,
}

#[derive(Deserialize)]
struct StoredMessage {
    subject: String,
    seq: u64,
    #[serde(default)]
    hdrs: Option<String>,
    #[serde(default)]
    data: Option<String>,
}

/// A message whose headers the client cannot read.
pub(super) struct Unreadable {
    pub(super) subject: String,
    pub(super) sequence: u64,
    pub(super) raw_headers: Vec<u8>,
    pub(super) body: Vec<u8>,
}

/// How many messages past the ack floor are looked at: the unreadable one
/// may sit behind others whose deliveries it keeps cutting off.
const SCAN: usize = 32;

/// The first message after `floor` on the function's subjects whose header
/// block is not UTF-8, among the next [`SCAN`].
pub(super) async fn find_unreadable(shared: &Shared, floor: u64) -> Option<Unreadable> {
    let mut after = floor;
    for _ in 0..SCAN {
        let message = next_message(shared, after).await?;
        after = message.seq;
        let Some(hdrs) = &message.hdrs else { continue };
        let raw_headers = BASE64_STANDARD.decode(hdrs.as_bytes()).ok()?;
        if std::str::from_utf8(&raw_headers).is_ok() {
            continue;
        }
        let body = match &message.data {
            Some(data) => BASE64_STANDARD.decode(data.as_bytes()).ok()?,
            None => Vec::new(),
        };
        return Some(Unreadable {
            subject: message.subject,
            sequence: message.seq,
            raw_headers,
            body,
        });
    }
    None
}

/// The first stored message after sequence `after` on the function's subjects.
async fn next_message(shared: &Shared, after: u64) -> Option<StoredMessage> {
    let mut first: Option<StoredMessage> = None;
    for filter in &shared.config.subjects {
        let request = json!({"seq": after + 1, "next_by_subj": filter});
        let subject = format!("STREAM.MSG.GET.{}", shared.config.stream);
        let reply: GetReply = shared.js.request(subject, &request).await.ok()?;
        if let Some(message) = reply.message {
            if first.as_ref().is_none_or(|m| message.seq < m.seq) {
                first = Some(message);
            }
        }
    }
    first
}

/// Dead-letters `message`, then deletes it from its stream. Returns whether
/// it was taken out.
pub(super) async fn quarantine(shared: &Shared, message: Unreadable) -> bool {
    let error = "a header value is not valid UTF-8; the NATS client cannot read this message, \
                 so jetrun dead-lettered it and deleted it from its stream";
    let letter = DeadLetter {
        function: &shared.config.name,
        reason: Reason::Permanent,
        error,
        attempts: 0,
        subject: &message.subject,
        stream: &shared.config.stream,
        sequence: message.sequence,
        failed_at: SystemTime::now(),
    };
    let mut headers = letter.headers(Some(&lossy_headers(&message.raw_headers)));
    headers.insert(
        "Jetrun-Original-Headers-Base64",
        BASE64_STANDARD.encode(&message.raw_headers).as_str(),
    );
    let body = bytes::Bytes::from(message.body);
    let published = super::publish_dead_letter(
        shared,
        headers,
        body,
        &shared.config.stream,
        message.sequence,
    )
    .await;
    if let Err(err) = published {
        tracing::error!(function = %shared.config.name, sequence = message.sequence, %err,
            "Cannot dead-letter a message with unreadable headers; will try again.");
        return false;
    }
    shared.metrics.dead_letter.inc();
    shared.metrics.permanent.inc();
    let deleted = match shared.js.get_stream(&shared.config.stream).await {
        Ok(stream) => stream.delete_message(message.sequence).await.is_ok(),
        Err(_) => false,
    };
    tracing::error!(
        function = %shared.config.name,
        stream = %shared.config.stream,
        sequence = message.sequence,
        subject = %message.subject,
        deleted,
        "A message with a non-UTF-8 header value stalled the consumer; dead-lettered it and deleted it from its stream."
    );
    deleted
}

/// The header block `NATS/1.0\r\nName: value\r\n...`, read with invalid
/// UTF-8 replaced.
fn lossy_headers(raw: &[u8]) -> HeaderMap {
    let text = String::from_utf8_lossy(raw);
    let mut headers = HeaderMap::new();
    for line in text.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.is_empty() || name.chars().any(|c| c.is_control() || c == ' ') {
            continue;
        }
        let Ok(name) = name.parse::<async_nats::header::HeaderName>() else {
            continue;
        };
        headers.append(name, value.trim());
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_header_blocks_are_read_lossily() {
        let raw = b"NATS/1.0\r\nX-Bad: \xff\xfe\r\nX-Good: yes\r\n\r\n";
        let headers = lossy_headers(raw);
        assert_eq!(headers.get("X-Good").map(|v| v.as_str()), Some("yes"));
        assert_eq!(
            headers.get("X-Bad").map(|v| v.as_str()),
            Some("\u{fffd}\u{fffd}")
        );
    }
}
