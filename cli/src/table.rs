//! Plain aligned text tables for terminal output.

use std::fmt::Write as _;

/// A table with a header row; columns are padded to their widest cell.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Self {
        Self { rows: vec![headers.iter().map(|h| (*h).to_owned()).collect()] }
    }

    /// Appends a row (missing cells render empty). Control characters are escaped: cells
    /// carry text from untrusted processes (a comm or a path can hold an escape sequence
    /// that rewrites the operator's terminal).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.into_iter().map(|c| escape_controls(&c)).collect());
    }

    /// Renders the table; the last column is not padded.
    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| self.rows.iter().map(|r| r.get(c).map_or(0, |s| s.chars().count())).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, width) in widths.iter().enumerate() {
                let cell = row.get(c).map_or("", String::as_str);
                if c + 1 == columns {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<width$}  ");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Bidirectional formatting characters, which reorder what a terminal shows.
fn is_bidi(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every control character (C0, DEL, C1) written as `\xNN`, bidirectional
/// formatting characters as `\u{NNNN}`, and a backslash as `\\` so the escaping is
/// unambiguous.
pub fn escape_controls(text: &str) -> String {
    if !text.chars().any(|c| c.is_control() || is_bidi(c) || c == '\\') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_bidi(c) => {
                let _ = write!(out, "\\u{{{:04x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_in_cells() {
        let mut t = Table::new(&["COMM"]);
        t.row(vec!["evil\x1b]0;owned\x07\ttab\\x\u{9b}".into()]);
        assert_eq!(t.render(), "COMM\nevil\\x1b]0;owned\\x07\\x09tab\\\\x\\x9b\n");
        assert_eq!(escape_controls("plain /usr/bin/ls"), "plain /usr/bin/ls");
        assert_eq!(escape_controls("a\u{202e}b"), "a\\u{202e}b");
    }

    #[test]
    fn render_pads_columns_to_the_widest_cell() {
        let mut t = Table::new(&["NAME", "REV"]);
        t.row(vec!["a-long-name".into(), "1".into()]);
        t.row(vec!["b".into(), "12".into()]);
        assert_eq!(t.render(), "NAME         REV\na-long-name  1\nb            12\n");
    }
}
