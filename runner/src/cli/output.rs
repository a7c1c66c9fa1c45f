//! How verbs print: tables, times, counts and hex dumps. Pure.

use std::fmt::Write as _;
use std::time::SystemTime;

/// Left-aligned columns two spaces apart, a header row first; the last
/// column is not padded.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A time as RFC 3339, UTC, to the millisecond.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// `n` with its noun, plural when it is not 1.
pub(crate) fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The first line of `text`, cut to `width` characters with `...`.
pub(crate) fn first_line(text: &str, width: usize) -> String {
    let line = text.lines().next().unwrap_or("").trim_end();
    if line.chars().count() <= width {
        return line.to_string();
    }
    let cut: String = line.chars().take(width.saturating_sub(3)).collect();
    format!("{}...", cut.trim_end())
}

/// `xxd`-style lines: offset, 16 bytes in hex, and those bytes as ASCII.
pub(crate) fn hex_dump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, chunk) in bytes.chunks(16).enumerate() {
        let _ = write!(out, "{:08x}  ", i * 16);
        for j in 0..16 {
            match chunk.get(j) {
                Some(b) => {
                    let _ = write!(out, "{b:02x} ");
                }
                None => out.push_str("   "),
            }
            if j == 7 {
                out.push(' ');
            }
        }
        let ascii: String = chunk
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        let _ = writeln!(out, " |{ascii}|");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_table_pads_all_but_the_last_column() {
        let rows = vec![
            vec!["1".to_string(), "long value".to_string(), "x".to_string()],
            vec!["22".to_string(), "v".to_string(), "yy".to_string()],
        ];
        assert_eq!(
            table(&["A", "B", "C"], &rows),
            "A   B           C\n1   long value  x\n22  v           yy\n"
        );
    }

    #[test]
    fn counts_times_and_lines() {
        assert_eq!(count(1, "event"), "1 event");
        assert_eq!(count(0, "event"), "0 events");
        assert_eq!(
            rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(1500)),
            "1970-01-01T00:00:01.500Z"
        );
        assert_eq!(first_line("abcdef\nsecond", 5), "ab...");
        assert_eq!(first_line("abc", 5), "abc");
    }

    #[test]
    fn a_hex_dump_shows_bytes_and_ascii() {
        assert_eq!(
            hex_dump(b"ab\xff"),
            "00000000  61 62 ff                                          |ab.|\n"
        );
    }
}
