//! The ledger: a file test functions append one line to per call
//! (`<key> <attempt> <unix time> [...]`), so a test can count calls, see
//! attempts and measure the gaps between them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// One call of a test function.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The stream sequence (`$JETRUN_SEQUENCE`) or the event id (`EVENTS:12`).
    pub key: String,
    /// JetStream's delivery count, from 1.
    pub attempt: u32,
    /// When the call started, in seconds since the Unix epoch.
    pub at: f64,
    /// Whatever else the function wrote on the line (a worker's pid, say).
    pub extra: Vec<String>,
}

impl Entry {
    /// The stream sequence in the key (`12` or `EVENTS:12`).
    pub fn sequence(&self) -> u64 {
        let digits = self.key.rsplit(':').next().unwrap_or(&self.key);
        digits
            .parse()
            .unwrap_or_else(|_| panic!("ledger key {:?} holds no sequence", self.key))
    }
}

/// A ledger file; it need not exist yet.
#[derive(Debug, Clone)]
pub struct Ledger {
    path: PathBuf,
}

impl Ledger {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Ledger { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The complete lines so far (a line still being written is left out).
    pub fn entries(&self) -> Vec<Entry> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        parse(&text)
    }

    /// Calls so far.
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The distinct stream sequences handled so far.
    pub fn sequences(&self) -> BTreeSet<u64> {
        self.entries().iter().map(Entry::sequence).collect()
    }

    /// The attempts recorded for `key`, in the order they were written.
    pub fn attempts_of(&self, key: &str) -> Vec<u32> {
        self.entries()
            .into_iter()
            .filter(|e| e.key == key)
            .map(|e| e.attempt)
            .collect()
    }
}

fn parse(text: &str) -> Vec<Entry> {
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    complete
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let mut fields = line.split_whitespace();
            let key = fields.next().unwrap_or_else(|| malformed(line)).to_string();
            let attempt = fields.next().and_then(|a| a.parse().ok());
            let at = fields.next().and_then(|t| t.parse().ok());
            Entry {
                key,
                attempt: attempt.unwrap_or_else(|| malformed(line)),
                at: at.unwrap_or_else(|| malformed(line)),
                extra: fields.map(str::to_string).collect(),
            }
        })
        .collect()
}

fn malformed<T>(line: &str) -> T {
    panic!("malformed ledger line {line:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_complete_lines_only() {
        let entries = parse("3 1 100.5\nEVENTS:4 2 101.25 777\n5 1 10");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].sequence(), 3);
        assert_eq!(entries[1].key, "EVENTS:4");
        assert_eq!(entries[1].sequence(), 4);
        assert_eq!(entries[1].attempt, 2);
        assert_eq!(entries[1].at, 101.25);
        assert_eq!(entries[1].extra, ["777"]);
        assert!(entries[0].extra.is_empty());
        assert!(parse("").is_empty());
    }

    #[test]
    #[should_panic(expected = "malformed ledger line")]
    fn refuses_malformed_lines() {
        parse("3 one 100.5\n");
    }
}
