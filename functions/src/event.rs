//! The event a function receives: a CloudEvents 1.0 event whose data is kept
//! as the original bytes.

use std::collections::BTreeMap;

use base64::prelude::{Engine, BASE64_STANDARD};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

use crate::Failure;

/// A CloudEvents 1.0 event. Attribute names follow the spec; extensions
/// other than `correlationid` and `causationid` are kept in `extensions`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Event {
    pub id: String,
    pub source: String,
    pub event_type: String,
    pub subject: Option<String>,
    /// RFC 3339.
    pub time: Option<String>,
    pub datacontenttype: Option<String>,
    pub dataschema: Option<String>,
    /// Carried unchanged to every event emitted while handling this one.
    pub correlationid: Option<String>,
    /// The `id` of the event that caused this one.
    pub causationid: Option<String>,
    pub extensions: BTreeMap<String, String>,
    /// The data, byte for byte as published.
    pub data: Bytes,
}

impl Event {
    /// Whether the data is declared (or, with no declared type, found) to be JSON.
    pub fn is_json(&self) -> bool {
        match &self.datacontenttype {
            Some(ct) => is_json_content_type(ct),
            None => serde_json::from_slice::<serde::de::IgnoredAny>(&self.data).is_ok(),
        }
    }

    /// The data parsed as JSON into `T`; a body that does not parse is a
    /// permanent failure (retrying bad data helps no one).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Failure> {
        serde_json::from_slice(&self.data).map_err(|err| {
            Failure::permanent(format!("event data is not the expected JSON: {err}"))
        })
    }

    /// The event in CloudEvents structured JSON: `data` holds the JSON value
    /// when the data is JSON, `data_base64` otherwise.
    pub fn to_structured_json(&self) -> Value {
        let mut event = Map::new();
        event.insert("specversion".into(), json!("1.0"));
        event.insert("id".into(), json!(self.id));
        event.insert("source".into(), json!(self.source));
        event.insert("type".into(), json!(self.event_type));
        let optional = [
            ("subject", &self.subject),
            ("time", &self.time),
            ("datacontenttype", &self.datacontenttype),
            ("dataschema", &self.dataschema),
            ("correlationid", &self.correlationid),
            ("causationid", &self.causationid),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                event.insert(name.into(), json!(value));
            }
        }
        for (name, value) in &self.extensions {
            event.insert(name.clone(), json!(value));
        }
        match serde_json::from_slice::<Value>(&self.data) {
            Ok(data)
                if self
                    .datacontenttype
                    .as_deref()
                    .is_none_or(is_json_content_type) =>
            {
                event.insert("data".into(), data);
            }
            _ if self.data.is_empty() => {}
            _ => {
                event.insert(
                    "data_base64".into(),
                    json!(BASE64_STANDARD.encode(&self.data)),
                );
            }
        }
        Value::Object(event)
    }
}

/// `application/json`, `text/json` and any `+json` suffix.
pub(crate) fn is_json_content_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || essence.eq_ignore_ascii_case("text/json")
        || essence.to_ascii_lowercase().ends_with("+json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(data: &'static [u8], content_type: Option<&str>) -> Event {
        Event {
            id: "ORDERS:7".into(),
            source: "nats://ORDERS".into(),
            event_type: "order.placed".into(),
            datacontenttype: content_type.map(Into::into),
            correlationid: Some("c-1".into()),
            data: Bytes::from_static(data),
            ..Event::default()
        }
    }

    #[test]
    fn json_data_is_inlined_in_structured_mode() {
        let e = event(br#"{"order_id":1}"#, Some("application/json"));
        let v = e.to_structured_json();
        assert_eq!(v["data"], json!({"order_id": 1}));
        assert_eq!(v["type"], "order.placed");
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["correlationid"], "c-1");
        assert!(v.get("data_base64").is_none());
    }

    #[test]
    fn binary_data_is_base64_in_structured_mode() {
        let e = event(b"\xff\x00ab", None);
        let v = e.to_structured_json();
        assert_eq!(v["data_base64"], "/wBhYg==");
        assert!(v.get("data").is_none());
    }

    #[test]
    fn bad_json_is_a_permanent_failure() {
        let e = event(b"not json", None);
        let err = e.json::<Value>().unwrap_err();
        assert!(err.is_permanent());
        assert!(!e.is_json());
    }

    #[test]
    fn json_content_types_are_recognised() {
        assert!(is_json_content_type("application/json; charset=utf-8"));
        assert!(is_json_content_type("application/cloudevents+json"));
        assert!(!is_json_content_type("text/plain"));
    }
}
