//! Reading what Prometheus would: a tiny HTTP/1.1 GET (no client library)
//! for `/metrics`, `/healthz` and `/readyz`, and a parser for the text
//! exposition format that looks up one metric by name and labels.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// GETs `/metrics` from `addr`.
///
/// # Panics
/// When the server does not answer 200.
pub async fn scrape(addr: SocketAddr) -> String {
    match http_get(addr, "/metrics").await {
        Ok((200, body)) => body,
        Ok((status, body)) => panic!("GET http://{addr}/metrics answered {status}: {body}"),
        Err(e) => panic!("GET http://{addr}/metrics failed: {e}"),
    }
}

/// The status of `GET path` on `addr`; `None` when nothing answers (not
/// listening yet, say).
pub async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    http_get(addr, path).await.ok().map(|(status, _)| status)
}

/// One `GET` with `Connection: close`: the status and the body.
async fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, io::Error>(response)
    };
    let response = timeout(HTTP_TIMEOUT, exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer within 5s"))??;
    parse_response(&response)
}

fn parse_response(response: &[u8]) -> io::Result<(u16, String)> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&response[..split]);
    let body = &response[split + 4..];
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let chunked = head.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    let body = if chunked {
        dechunk(body).ok_or_else(|| bad("bad chunked body"))?
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size_text = size_text.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// The value of metric `name` in Prometheus text `text`, over the series
/// whose labels include every `(label, value)` given (other labels may be
/// present); when several series match, their sum. `None` when none match.
///
/// `metric(text, "jetrun_events_processed_total", &[("function", "f"), ("outcome", "retry")])`
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(sample) = parse_sample(line) else {
            continue;
        };
        if sample.name != name {
            continue;
        }
        let matches = labels
            .iter()
            .all(|(k, v)| sample.labels.iter().any(|(sk, sv)| sk == k && sv == v));
        if matches {
            found = Some(found.unwrap_or(0.0) + sample.value);
        }
    }
    found
}

struct Sample<'a> {
    name: &'a str,
    labels: Vec<(&'a str, String)>,
    value: f64,
}

/// `name{label="value",...} value [timestamp]`
fn parse_sample(line: &str) -> Option<Sample<'_>> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        loop {
            rest = rest.trim_start_matches([',', ' ']);
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find('=')?;
            let key = rest[..eq].trim();
            let (value, after) = parse_label_value(rest[eq + 1..].strip_prefix('"')?)?;
            labels.push((key, value));
            rest = after;
        }
    }
    let value = parse_value(rest.split_whitespace().next()?)?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// A label value after its opening quote: the unescaped value and what
/// follows the closing quote.
fn parse_label_value(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &text[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                other => value.push(other),
            },
            c => value.push(c),
        }
    }
    None
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

/// Waits (up to 30 s) until the runner serving metrics on `addr` answers
/// `/readyz` with 200: NATS connected and every consumer bound.
pub async fn wait_ready(addr: SocketAddr) {
    crate::wait::wait_until(
        Duration::from_secs(30),
        "/readyz answers 200",
        || async move { http_status(addr, "/readyz").await == Some(200) },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP jetrun_events_processed_total Attempts by outcome.
# TYPE jetrun_events_processed_total counter
jetrun_events_processed_total{function="a",outcome="success"} 7
jetrun_events_processed_total{function="a",outcome="retry"} 3
jetrun_events_processed_total{function="b",outcome="success"} 1
jetrun_handler_duration_seconds_bucket{function="a",le="+Inf"} 12
jetrun_nats_connected 1
jetrun_build_info{version="0.1.0"} 1
odd{msg="say \"hi\", ok"} 2.5 1700000000000
"#;

    #[test]
    fn finds_by_name_and_labels() {
        let m = |name, labels: &[(&str, &str)]| metric(TEXT, name, labels);
        let processed = "jetrun_events_processed_total";
        assert_eq!(
            m(processed, &[("function", "a"), ("outcome", "retry")]),
            Some(3.0)
        );
        assert_eq!(m(processed, &[("function", "a")]), Some(10.0));
        assert_eq!(m(processed, &[("function", "c")]), None);
        assert_eq!(m("jetrun_nats_connected", &[]), Some(1.0));
        assert_eq!(m("jetrun_build_info", &[]), Some(1.0));
        assert_eq!(
            m("jetrun_handler_duration_seconds_bucket", &[("le", "+Inf")]),
            Some(12.0)
        );
        assert_eq!(m("odd", &[("msg", r#"say "hi", ok"#)]), Some(2.5));
        assert_eq!(m("jetrun_events", &[]), None);
    }

    #[test]
    fn parses_plain_and_chunked_responses() {
        let plain = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 3\r\n\r\nno\n";
        assert_eq!(parse_response(plain).unwrap(), (503, "no\n".to_string()));
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), (200, "abcde".to_string()));
    }
}
