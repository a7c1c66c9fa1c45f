//! An event's key, read where `key` says (a JSON pointer into its data, or
//! a token of its subject), and the partition it falls in: the same on every
//! replica and every version of jetrun, so a key always meets the same
//! pinned consumer.

use jetrun_config::KeySource;
use jetrun_functions::Event;

/// The most bytes of a key kept as written; a longer one is cut there and
/// given the hash of the whole key, so two long keys sharing a beginning
/// stay apart.
const MAX_KEY: usize = 256;

/// An event's key, as text: a string as it is, any other scalar as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Key(String);

impl Key {
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The partition (of `partitions`) this key belongs to: FNV-1a over its
    /// bytes, a hash whose value never changes between builds.
    pub(crate) fn partition(&self, partitions: usize) -> usize {
        (fnv1a(self.0.as_bytes()) % partitions.max(1) as u64) as usize
    }
}

#[cfg(test)]
impl Key {
    pub(crate) fn for_tests(key: &str) -> Key {
        Key(key.to_string())
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The key of an event stored on `subject`, or why it has none (said as
/// the end of a sentence: "the event has no key: ...").
pub(crate) fn read(source: &KeySource, subject: &str, event: &Event) -> Result<Key, String> {
    match source {
        KeySource::SubjectToken(n) => subject
            .split('.')
            .nth(n.saturating_sub(1))
            .filter(|token| !token.is_empty())
            .map(|token| Key(cut(token)))
            .ok_or_else(|| format!("its subject {subject} has no token {n}")),
        KeySource::Pointer(pointer) => {
            let data: serde_json::Value = serde_json::from_slice(&event.data)
                .map_err(|_| format!("key {pointer}: its data is not JSON"))?;
            match data.pointer(pointer) {
                None | Some(serde_json::Value::Null) => {
                    Err(format!("key {pointer}: its data has no value there"))
                }
                Some(serde_json::Value::String(text)) if text.is_empty() => {
                    Err(format!("key {pointer}: the value there is empty"))
                }
                Some(serde_json::Value::String(text)) => Ok(Key(cut(text))),
                Some(value @ (serde_json::Value::Array(_) | serde_json::Value::Object(_))) => {
                    Err(format!(
                        "key {pointer}: the value there is {}, not a string or a number",
                        if value.is_array() {
                            "an array"
                        } else {
                            "an object"
                        }
                    ))
                }
                Some(scalar) => Ok(Key(cut(&scalar.to_string()))),
            }
        }
    }
}

/// FNV-1a, 64 bits: a hash whose value never changes between builds.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn cut(text: &str) -> String {
    if text.len() <= MAX_KEY {
        return text.to_string();
    }
    let mut end = MAX_KEY;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}#{:016x}", &text[..end], fnv1a(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(data: &str) -> Event {
        Event {
            data: bytes::Bytes::from(data.to_string()),
            ..Event::default()
        }
    }

    #[test]
    fn keys_from_data_and_subject() {
        let pointer = KeySource::Pointer("/account_id".into());
        let read = |data: &str| super::read(&pointer, "payment.made", &event(data));
        assert_eq!(read(r#"{"account_id":"a-1"}"#).unwrap().as_str(), "a-1");
        assert_eq!(read(r#"{"account_id":42}"#).unwrap().as_str(), "42");
        assert!(read(r#"{"other":1}"#).unwrap_err().contains("no value"));
        assert!(read(r#"{"account_id":null}"#).is_err());
        assert!(read(r#"{"account_id":""}"#).is_err());
        assert!(read(r#"{"account_id":[1]}"#).unwrap_err().contains("array"));
        assert!(read("not json").unwrap_err().contains("not JSON"));
        let token = KeySource::SubjectToken(2);
        let read = |subject: &str| super::read(&token, subject, &event("{}"));
        assert_eq!(read("order.o-7.placed").unwrap().as_str(), "o-7");
        assert!(read("order").unwrap_err().contains("no token 2"));
    }

    #[test]
    fn partitions_are_stable_and_spread() {
        // Fixed values: a key must fall in the same partition on every
        // replica and after every upgrade.
        assert_eq!(
            super::fnv1a(b"a"),
            0xaf63_dc4c_8601_ec8c,
            "FNV-1a's published value"
        );
        assert_eq!(super::fnv1a(b"a-1"), 0xe61a_6419_0463_c246);
        assert_eq!(Key("a-1".into()).partition(4), 2);
        assert_eq!(
            Key("".into()).partition(7),
            (0xcbf2_9ce4_8422_2325u64 % 7) as usize
        );
        let mut counts = [0usize; 4];
        for n in 0..1000 {
            counts[Key(format!("account-{n}")).partition(4)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 150), "{counts:?}");
    }

    #[test]
    fn long_keys_are_cut_on_a_char_boundary_and_stay_apart() {
        let long = "é".repeat(200);
        let key = super::read(&KeySource::SubjectToken(1), &long, &event("{}")).unwrap();
        assert!(key.as_str().len() <= MAX_KEY + 17, "{}", key.as_str().len());
        let other = super::read(
            &KeySource::SubjectToken(1),
            &format!("{long}x"),
            &event("{}"),
        )
        .unwrap();
        assert_ne!(key, other, "two long keys sharing their first 256 bytes");
    }
}
