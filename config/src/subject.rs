//! NATS subjects and subject filters: which are valid, which filter a stream
//! subject captures, and which two filters overlap. Tokens are separated by
//! `.`; `*` matches one token and `>` one or more, at the end only.

/// Why a subject is not valid, as the end of a sentence.
pub(crate) fn check(subject: &str, wildcards: bool) -> Result<(), &'static str> {
    if subject.is_empty() {
        return Err("it is empty");
    }
    if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("it contains whitespace");
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    let last = tokens.len() - 1;
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Err("it has an empty token (a leading, trailing or doubled .)");
        }
        let is_wildcard = *token == "*" || *token == ">";
        if !is_wildcard && token.contains(['*', '>']) {
            return Err("* and > must be whole tokens");
        }
        if is_wildcard && !wildcards {
            return Err("it must not contain wildcards (* or >)");
        }
        if *token == ">" && i != last {
            return Err("> may only be the last token");
        }
    }
    Ok(())
}

/// Whether every subject `filter` matches is also matched by `stream`: a
/// consumer filtering on `filter` only sees messages of a stream holding
/// `stream`. Both must be valid subjects.
pub(crate) fn captures(stream: &str, filter: &str) -> bool {
    let mut s = stream.split('.');
    let mut f = filter.split('.');
    loop {
        match (s.next(), f.next()) {
            (None, None) => return true,
            // `>` matches one or more tokens, whatever `filter` has from here.
            (Some(">"), Some(_)) => return true,
            // `filter` matches subjects of lengths `stream` does not.
            (None, Some(_)) | (Some(_), None) | (Some(_), Some(">")) => return false,
            (Some("*"), Some(_)) => {}
            (Some(s), Some(f)) if s == f => {}
            (Some(_), Some(_)) => return false,
        }
    }
}

/// Whether some subject is matched by both `a` and `b`.
pub(crate) fn overlaps(a: &str, b: &str) -> bool {
    let mut a = a.split('.');
    let mut b = b.split('.');
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some("*"), Some(_)) | (Some(_), Some("*")) => {}
            (Some(a), Some(b)) if a == b => {}
            (Some(_), Some(_)) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_subjects() {
        for s in [
            "order",
            "order.placed",
            "order.*",
            "order.>",
            "*.placed",
            ">",
            "a-b_c.1",
        ] {
            assert_eq!(check(s, true), Ok(()), "{s}");
        }
        assert_eq!(check("dlq.reserve-stock", false), Ok(()));
    }

    #[test]
    fn invalid_subjects() {
        assert_eq!(check("", true), Err("it is empty"));
        assert_eq!(check("order placed", true), Err("it contains whitespace"));
        for s in [".order", "order.", "order..placed"] {
            assert_eq!(
                check(s, true),
                Err("it has an empty token (a leading, trailing or doubled .)"),
                "{s}"
            );
        }
        assert_eq!(
            check("order.>.x", true),
            Err("> may only be the last token")
        );
        assert_eq!(
            check("order.pl*", true),
            Err("* and > must be whole tokens")
        );
        assert_eq!(
            check("dlq.*", false),
            Err("it must not contain wildcards (* or >)")
        );
    }

    #[test]
    fn a_full_wildcard_captures_the_rest() {
        assert!(captures("order.>", "order.placed"));
        assert!(captures("order.>", "order.placed.eu"));
        assert!(captures("order.>", "order.*"));
        assert!(captures("order.>", "order.>"));
        assert!(captures("order.>", "order.*.eu.>"));
        assert!(captures(">", "anything.at.all"));
        assert!(!captures("order.>", "order"));
        assert!(!captures("order.>", "orders.placed"));
    }

    #[test]
    fn a_token_wildcard_captures_one_token() {
        assert!(captures("order.*", "order.placed"));
        assert!(captures("order.*", "order.*"));
        assert!(captures("*.placed", "order.placed"));
        assert!(!captures("order.*", "order.>"));
        assert!(!captures("order.*", "order.placed.eu"));
        assert!(!captures("order.*", "order"));
    }

    #[test]
    fn a_literal_captures_only_itself() {
        assert!(captures("order.placed", "order.placed"));
        assert!(!captures("order.placed", "order.*"));
        assert!(!captures("order.placed", "order.>"));
        assert!(!captures("order.placed", "order.shipped"));
        assert!(!captures("order.placed", "order.placed.eu"));
    }

    #[test]
    fn a_filter_wildcard_is_captured_only_by_as_wide_a_stream_wildcard() {
        assert!(!captures("order.placed.>", "order.>"));
        assert!(captures("order.>", "order.placed.>"));
        assert!(!captures("order.*.>", "order.>"));
        assert!(captures("*.>", "order.>"));
    }

    #[test]
    fn overlapping_filters() {
        assert!(overlaps("order.>", "order.placed"));
        assert!(overlaps("order.placed", "order.>"));
        assert!(overlaps("order.*", "*.placed"));
        assert!(overlaps(">", "dlq.x"));
        assert!(overlaps("dlq.>", "*.x"));
        assert!(overlaps("a.b", "a.b"));
        assert!(!overlaps("dlq.>", "dlq"));
        assert!(!overlaps("order.>", "user.>"));
        assert!(!overlaps("order.*", "order.placed.eu"));
        assert!(!overlaps("a.b", "a.b.c"));
    }
}
