//! The dead letter of an event: its original body, byte for byte, and its
//! original headers (but those nats-server would act on) plus the
//! `Jetrun-*` ones saying where it came from and why it failed; and its
//! publish. A body too big to travel with jetrun's headers (over the
//! server's max_payload) is stored whole in the object store
//! `jetrun_dead_letters` first, and the dead letter points at it: no event
//! is ever left with only a cut copy, whatever the stream's retention does
//! with the original after `+TERM`.

use std::time::SystemTime;

use async_nats::connection::UNREADABLE_HEADERS;
use async_nats::{jetstream, HeaderMap, HeaderName};
use base64::prelude::{Engine, BASE64_STANDARD};
use bytes::Bytes;

use super::retry::Reason;
use crate::emit::{self, PublishError};
use crate::flow::key::Key;
use crate::flow::park::{self, Blocker};
use crate::headers::{self, is_server_directive, BadHeader, Put};
use crate::nats;

/// The most of an error message a dead letter carries.
const ERROR_LIMIT: usize = 1024;

pub(crate) struct DeadLetter<'a> {
    pub(crate) function: &'a str,
    pub(crate) reason: Reason,
    pub(crate) error: &'a str,
    pub(crate) attempts: u64,
    pub(crate) subject: &'a str,
    pub(crate) stream: &'a str,
    /// When `stream` was created (0: not known): its sequences start over
    /// when it is made again.
    pub(crate) stream_created: u64,
    pub(crate) sequence: u64,
    pub(crate) failed_at: SystemTime,
}

/// Why a dead letter was not stored: the event stays in its stream and is
/// tried again.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NotStored {
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Header(#[from] BadHeader),
    #[error("cannot keep its whole body in object store jetrun_dead_letters: {0}")]
    Body(String),
}

impl DeadLetter<'_> {
    /// `Nats-Msg-Id` of the dead letter: a crash between its publish and the
    /// original's `+TERM` cannot make two, while the same sequence of a
    /// stream made again is another event, and gets its own.
    pub(crate) fn msg_id(&self) -> String {
        format!(
            "{}@{}:{}:{}",
            self.stream, self.stream_created, self.sequence, self.function
        )
    }

    /// Where a body too big for the dead letter is kept whole.
    fn body_object(&self) -> String {
        format!(
            "{}/{}@{}/{}",
            self.function, self.stream, self.stream_created, self.sequence
        )
    }

    /// The dead letter's headers: the original's (those nats-server would act
    /// on left out; a block the client could not read kept raw, base64, with
    /// what of it can be read), then jetrun's.
    pub(crate) fn headers(&self, original: Option<&HeaderMap>) -> Result<HeaderMap, BadHeader> {
        let mut headers = HeaderMap::new();
        if let Some(original) = original {
            match original.get(UNREADABLE_HEADERS) {
                Some(raw) => {
                    let block = BASE64_STANDARD.decode(raw.as_str()).unwrap_or_default();
                    headers = readable_part(&block);
                    headers.set(
                        HeaderName::from_static("Jetrun-Original-Headers-Base64"),
                        raw.clone(),
                    );
                }
                None => {
                    for (name, values) in original.iter() {
                        if is_server_directive(name.as_ref()) {
                            continue;
                        }
                        for value in values {
                            headers.add(name.clone(), value.clone());
                        }
                    }
                }
            }
        }
        let name = HeaderName::from_static;
        headers.put(name("Jetrun-Function"), self.function)?;
        headers.put(name("Jetrun-Reason"), self.reason.as_str())?;
        headers.put(name("Jetrun-Error"), &one_line(self.error, ERROR_LIMIT))?;
        headers.put_number(name("Jetrun-Attempts"), self.attempts);
        headers.put(name("Jetrun-Original-Subject"), self.subject)?;
        headers.put(name("Jetrun-Original-Stream"), self.stream)?;
        headers.put_number(name("Jetrun-Original-Sequence"), self.sequence);
        headers.put(
            name("Jetrun-Failed-At"),
            &humantime::format_rfc3339_millis(self.failed_at).to_string(),
        )?;
        headers.put(name("Nats-Msg-Id"), &self.msg_id())?;
        Ok(headers)
    }
}

/// What the dead letter of a keyed function's event says of its key.
pub(crate) struct Keyed<'a> {
    pub(crate) key: &'a Key,
    /// The dead letter the event's key is parked behind (reason `parked`).
    pub(crate) parked_behind: Option<&'a Blocker>,
}

impl Keyed<'_> {
    /// Adds `Jetrun-Key` (left out for a key no header can carry: one with
    /// a CR or LF) and `Jetrun-Parked-Behind`.
    fn put(&self, headers: &mut HeaderMap) -> Result<(), BadHeader> {
        let key = HeaderName::from_static(park::KEY_HEADER);
        if let Ok(value) = headers::value(&key, self.key.as_str()) {
            headers.set(key, value);
        }
        if let Some(blocker) = self.parked_behind {
            headers.put(
                HeaderName::from_static(park::PARKED_BEHIND),
                &blocker.to_string(),
            )?;
        }
        Ok(())
    }
}

/// The lines of a header block the client could not read that can be read
/// on their own (`Name: value`, a valid name, no CR or LF in the value).
fn readable_part(raw: &[u8]) -> HeaderMap {
    let text = String::from_utf8_lossy(raw);
    let mut headers = HeaderMap::new();
    for line in text.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let Ok(name) = headers::name(name.trim()) else {
            continue;
        };
        let text: &str = name.as_ref();
        if text.is_empty() || is_server_directive(text) {
            continue;
        }
        if let Ok(value) = headers::value(&name, value.trim()) {
            headers.add(name, value);
        }
    }
    headers
}

/// Publishes the dead letter of `original`'s event (`body`) to `subject` and
/// waits for its stream's ack; a keyed function's says what `keyed` says. A body that does not fit (the server's
/// max_payload) is first stored whole in object store
/// [`nats::DEAD_LETTER_BODIES`] as `<function>/<stream>@<created>/<sequence>`; the dead letter
/// then carries `Jetrun-Body-Object` (where it is), `Jetrun-Body-Truncated`
/// (its length) and as much of the body as fits.
pub(crate) async fn publish(
    js: &jetstream::Context,
    subject: &str,
    letter: &DeadLetter<'_>,
    keyed: Option<&Keyed<'_>>,
    original: Option<&HeaderMap>,
    body: Bytes,
) -> Result<(), NotStored> {
    let mut headers = letter.headers(original)?;
    if let Some(keyed) = keyed {
        keyed.put(&mut headers)?;
    }
    match emit::publish(js, subject, headers.clone(), body.clone()).await {
        Ok(_) => return Ok(()),
        Err(PublishError::TooBig { .. }) => {}
        Err(err) => return Err(err.into()),
    }
    let object = letter.body_object();
    let store = nats::dead_letter_bodies(js)
        .await
        .map_err(|err| NotStored::Body(err.to_string()))?;
    store
        .put(object.as_str(), &mut body.as_ref())
        .await
        .map_err(|err| NotStored::Body(err.to_string()))?;
    let room = js
        .client()
        .max_payload()
        .saturating_sub(headers_size(&headers) + 512);
    tracing::warn!(
        size = body.len(),
        kept = room,
        object = %format!("{}/{object}", nats::DEAD_LETTER_BODIES),
        "The dead letter is bigger than the server's max_payload: its whole body is in the \
         object store, and the dead letter carries what fits."
    );
    headers.put(
        HeaderName::from_static("Jetrun-Body-Object"),
        &format!("{}/{object}", nats::DEAD_LETTER_BODIES),
    )?;
    headers.put_number(
        HeaderName::from_static("Jetrun-Body-Truncated"),
        body.len() as u64,
    );
    let cut = body.slice(..room.min(body.len()));
    emit::publish(js, subject, headers, cut).await?;
    Ok(())
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
            stream_created: 1_714_557_600_000_000_000,
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
        original.insert("Nats-Schedule", "@every 1s");
        original.insert("nats-batch-id", "b-1");
        original.insert("Nats-TTL", "1s");
        let headers = letter("boom").headers(Some(&original)).unwrap();
        let get = |k: &str| headers.get(k).map(|v| v.as_str().to_string());
        assert_eq!(get("X-Tenant").as_deref(), Some("acme"));
        for directive in [
            "Nats-Expected-Stream",
            "Nats-Schedule",
            "nats-batch-id",
            "Nats-TTL",
        ] {
            assert_eq!(get(directive), None, "{directive} is not kept");
        }
        assert_eq!(
            get("Nats-Msg-Id").as_deref(),
            Some("ORDERS@1714557600000000000:7:reserve-stock")
        );
        assert_eq!(get("Jetrun-Reason").as_deref(), Some("permanent"));
        assert_eq!(get("Jetrun-Original-Sequence").as_deref(), Some("7"));
        assert_eq!(
            get("Jetrun-Failed-At").as_deref(),
            Some("1970-01-01T00:00:00.000Z")
        );
    }

    #[test]
    fn a_keyed_dead_letter_names_its_key_and_what_it_is_parked_behind() {
        let mut headers = letter("parked").headers(None).unwrap();
        let key = Key::for_tests("a-1");
        let behind = Blocker {
            stream: "PAYMENTS".into(),
            sequence: 4,
        };
        let keyed = Keyed {
            key: &key,
            parked_behind: Some(&behind),
        };
        keyed.put(&mut headers).unwrap();
        let get = |k: &str| headers.get(k).map(|v| v.as_str().to_string());
        assert_eq!(get("Jetrun-Key").as_deref(), Some("a-1"));
        assert_eq!(get("Jetrun-Parked-Behind").as_deref(), Some("PAYMENTS:4"));
        let mut headers = HeaderMap::new();
        let odd = Key::for_tests("a\nb");
        Keyed {
            key: &odd,
            parked_behind: None,
        }
        .put(&mut headers)
        .unwrap();
        assert_eq!(
            headers.get("Jetrun-Key"),
            None,
            "no header carries a newline"
        );
    }

    #[test]
    fn the_error_is_one_line_of_at_most_1_kib() {
        let long = format!("first\nsecond {}", "é".repeat(2000));
        let headers = letter(&long).headers(None).unwrap();
        let error = headers.get("Jetrun-Error").unwrap().as_str().to_string();
        assert!(!error.contains('\n'));
        assert!(error.len() <= 1024);
        assert!(error.starts_with("first second"));
    }

    #[test]
    fn an_unreadable_header_block_is_kept_raw_with_what_can_be_read() {
        let raw = b"NATS/1.0\r\nX-Good: yes\r\nBad Name: x\r\nno colon\r\nX-Bad: \xff\r\n\r\n";
        let mut original = HeaderMap::new();
        original.insert(UNREADABLE_HEADERS, BASE64_STANDARD.encode(raw).as_str());
        original.insert("Jetrun-Unreadable-Headers-Reason", "why");
        let headers = letter("boom").headers(Some(&original)).unwrap();
        let get = |k: &str| headers.get(k).map(|v| v.as_str().to_string());
        assert_eq!(get("X-Good").as_deref(), Some("yes"));
        assert_eq!(get("X-Bad").as_deref(), Some("\u{fffd}"));
        assert!(headers
            .iter()
            .all(|(name, _)| name.to_string() != "Bad Name"));
        let kept = get("Jetrun-Original-Headers-Base64").unwrap();
        assert_eq!(BASE64_STANDARD.decode(kept).unwrap(), raw);
        assert_eq!(get(UNREADABLE_HEADERS), None);
    }
}
