//! Secrets kept out of what jetrun says: the password (or token) in a URL's
//! userinfo and secret-looking query parameters are replaced by `***` in
//! every URL a log line, an error, a dead letter or a reply carries. Pure.

/// Query parameters whose value is a secret, by name (compared without case).
const SECRET_PARAMETERS: &[&str] = &[
    "password",
    "passwd",
    "pass",
    "pwd",
    "token",
    "access_token",
    "auth",
    "secret",
    "key",
    "apikey",
    "api_key",
    "signature",
    "sig",
];

/// `url` with its secrets replaced: `nats://alice:***@host:4222`,
/// `nats://***@host` (a token alone), `https://h/hook?token=***`.
pub(crate) fn url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest_start = scheme_end + 3;
    let rest = &url[rest_start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..rest_start]);
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push_str(":***");
                }
                None => out.push_str("***"),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let tail = &rest[authority_end..];
    match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((query, fragment)) => (query, Some(fragment)),
                None => (query, None),
            };
            out.push_str(path);
            out.push('?');
            let parameters: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _))
                        if SECRET_PARAMETERS
                            .iter()
                            .any(|secret| secret.eq_ignore_ascii_case(name)) =>
                    {
                        format!("{name}=***")
                    }
                    _ => pair.to_string(),
                })
                .collect();
            out.push_str(&parameters.join("&"));
            if let Some(fragment) = fragment {
                out.push('#');
                out.push_str(fragment);
            }
        }
        None => out.push_str(tail),
    }
    out
}

/// `text` with every URL in it (`scheme://...` up to whitespace or a quote,
/// bracket or comma) passed through [`url`].
pub(crate) fn text(text: &str) -> String {
    if !text.contains("://") {
        return text.to_string();
    }
    let ends =
        |c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | ')' | ']' | ',' | '`');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let scheme_start = rest[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        let end = rest[at + 3..].find(ends).map_or(rest.len(), |i| at + 3 + i);
        out.push_str(&rest[..scheme_start]);
        out.push_str(&url(&rest[scheme_start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// A list of URLs, each redacted, joined with `, `.
pub(crate) fn urls(urls: &[String]) -> String {
    urls.iter().map(|u| url(u)).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_secrets_are_hidden() {
        assert_eq!(
            url("nats://alice:s3cr3t@host:4222"),
            "nats://alice:***@host:4222"
        );
        assert_eq!(url("nats://t0ken@host:4222"), "nats://***@host:4222");
        assert_eq!(url("nats://host:4222"), "nats://host:4222");
        assert_eq!(url("tls://a:b@h/x?y=1"), "tls://a:***@h/x?y=1");
    }

    #[test]
    fn secret_query_parameters_are_hidden() {
        assert_eq!(
            url("https://partner.example/hook?token=abc&x=1&API_KEY=k#f"),
            "https://partner.example/hook?token=***&x=1&API_KEY=***#f"
        );
        assert_eq!(url("http://h/p?x"), "http://h/p?x");
    }

    #[test]
    fn urls_in_text_are_found() {
        assert_eq!(
            text("error sending request for url (http://u:p@h:8080/x?token=t): refused"),
            "error sending request for url (http://u:***@h:8080/x?token=***): refused"
        );
        assert_eq!(
            text("cannot reach nats://alice:s3cr3t@h:4222, nats://h2"),
            "cannot reach nats://alice:***@h:4222, nats://h2"
        );
        assert_eq!(text("no url here"), "no url here");
        assert_eq!(text("odd :// start"), "odd :// start");
    }
}
