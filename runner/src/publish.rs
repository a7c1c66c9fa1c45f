//! `jetrun publish SUBJECT [DATA|-]`: one event in CloudEvents binary mode,
//! acknowledged by the stream that captures the subject.

use std::io::Read;
use std::time::SystemTime;

use anyhow::{bail, Context as _};
use async_nats::HeaderMap;

pub(crate) async fn publish(
    server: &str,
    subject: &str,
    data: Option<&str>,
    source: &str,
    event_type: Option<String>,
) -> anyhow::Result<()> {
    let body = match data {
        Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read the data from stdin")?;
            buf
        }
        Some(text) => text.as_bytes().to_vec(),
        None => Vec::new(),
    };
    let client = async_nats::connect(server).await.with_context(|| {
        format!("cannot reach NATS at {server}; is nats-server running? try `jetrun dev`")
    })?;
    let js = async_nats::jetstream::new(client);
    let id = uuid::Uuid::new_v4().to_string();
    let mut headers = HeaderMap::new();
    headers.insert("ce-specversion", "1.0");
    headers.insert("ce-id", id.as_str());
    headers.insert("ce-type", event_type.as_deref().unwrap_or(subject));
    headers.insert("ce-source", source);
    headers.insert(
        "ce-time",
        humantime::format_rfc3339_micros(SystemTime::now())
            .to_string()
            .as_str(),
    );
    if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok() {
        headers.insert("ce-datacontenttype", "application/json");
    }
    headers.insert("Nats-Msg-Id", id.as_str());
    let ack = match js
        .publish_with_headers(subject.to_string(), headers, body.into())
        .await
    {
        Ok(future) => future.await,
        Err(err) => Err(err),
    };
    match ack {
        Ok(ack) => {
            println!(
                "published {id} to stream {} at sequence {}",
                ack.stream, ack.sequence
            );
            Ok(())
        }
        Err(err)
            if err.kind() == async_nats::jetstream::context::PublishErrorKind::StreamNotFound =>
        {
            bail!("no stream captures subject {subject}; declare one in [streams.*] and run jetrun once")
        }
        Err(err) => Err(err).with_context(|| format!("cannot publish to {subject}")),
    }
}
