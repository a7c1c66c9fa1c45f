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

use super::dead_letter::{self, DeadLetter};
use super::retry::Reason;
use super::Shared;
use crate::nats::{self, RawStored};

/// How many messages past the ack floor are looked at: the unreadable one
/// may sit behind others whose deliveries it keeps cutting off.
const SCAN: usize = 32;

/// Looks at the messages just past the ack `floor` of a consumer whose floor
/// has stopped moving, and quarantines the first one the client cannot read.
pub(super) async fn look_past(shared: &Shared, floor: u64) {
    if let Some(message) = find_unreadable(shared, floor).await {
        quarantine(shared, message).await;
    }
}

/// The first message after `floor` on the unit's subjects whose header
/// block is not UTF-8, among the next [`SCAN`].
async fn find_unreadable(shared: &Shared, floor: u64) -> Option<RawStored> {
    let binding = &shared.unit.binding;
    let mut after = floor;
    for _ in 0..SCAN {
        let message = nats::next_stored(&shared.js, &binding.stream, &binding.subjects, after + 1)
            .await
            .ok()??;
        after = message.seq;
        if message.has_unreadable_headers() {
            return Some(message);
        }
    }
    None
}

/// Dead-letters `message`, then deletes it from its stream. Returns whether
/// it was taken out.
async fn quarantine(shared: &Shared, message: RawStored) -> bool {
    let binding = &shared.unit.binding;
    let error = "a header value is not valid UTF-8; the NATS client cannot read this message, \
                 so jetrun dead-lettered it and deleted it from its stream";
    let letter = DeadLetter {
        function: &shared.unit.name,
        reason: Reason::Permanent,
        error,
        attempts: 0,
        subject: &message.subject,
        stream: &binding.stream,
        sequence: message.seq,
        failed_at: SystemTime::now(),
    };
    let raw_headers = message.header_block().unwrap_or_default();
    let mut headers = letter.headers(Some(&lossy_headers(&raw_headers)));
    headers.insert(
        "Jetrun-Original-Headers-Base64",
        BASE64_STANDARD.encode(&raw_headers).as_str(),
    );
    let body = bytes::Bytes::from(message.body());
    let published =
        dead_letter::publish(&shared.js, &binding.dead_letter, headers, body, &letter).await;
    if let Err(err) = published {
        tracing::error!(sequence = message.seq, %err,
            "Cannot dead-letter a message with unreadable headers; will try again.");
        return false;
    }
    shared.metrics.dead_letter.inc();
    shared.metrics.permanent.inc();
    let deleted = match shared.js.get_stream(&binding.stream).await {
        Ok(stream) => stream.delete_message(message.seq).await.is_ok(),
        Err(_) => false,
    };
    tracing::error!(
        stream = %binding.stream,
        sequence = message.seq,
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
