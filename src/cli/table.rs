//! Plain text tables: columns padded to their widest cell.

use std::io::Write;

/// A table with a header row.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
        }
    }

    /// Adds a row; control characters in a cell are shown escaped.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.iter().map(|cell| printable(cell)).collect());
    }

    /// Writes the table; the last column is not padded.
    pub fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|column| {
                self.rows
                    .iter()
                    .filter_map(|row| row.get(column))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &self.rows {
            let mut line = String::new();
            for (column, cell) in row.iter().enumerate() {
                if column + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<width$}  ", width = widths[column]));
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// `key  value` lines, keys padded; control characters in a value are
/// shown escaped.
pub fn pairs(out: &mut impl Write, pairs: &[(&str, String)]) -> std::io::Result<()> {
    let width = pairs.iter().map(|(key, _)| key.len()).max().unwrap_or(0);
    for (key, value) in pairs {
        writeln!(out, "{key:<width$}  {}", printable(value))?;
    }
    Ok(())
}

/// `text` with every control character escaped (`\n`, `\u{1b}`, ...).
/// Job fields such as `error` are written by workers: printed raw, an
/// escape sequence in one could rewrite the operator's terminal or forge
/// lines of the table.
pub fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// At most `max` characters, with `...` when cut.
pub fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let head: String = text.chars().take(max.saturating_sub(3)).collect();
        format!("{head}...")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_padded_to_the_widest_cell() {
        let mut table = Table::new(&["ID", "STATUS"]);
        table.row(vec!["1".into(), "PENDING".into()]);
        table.row(vec!["12345".into(), "FAILED".into()]);
        let mut out = Vec::new();
        table.write(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ID     STATUS\n1      PENDING\n12345  FAILED\n"
        );
        assert_eq!(cut("abcdefgh", 6), "abc...");
        assert_eq!(cut("abc", 6), "abc");
    }

    #[test]
    fn control_characters_from_job_fields_are_escaped() {
        let mut table = Table::new(&["ID", "ERROR"]);
        table.row(vec![
            "1".into(),
            "boom\n2  COMPLETED\u{1b}[2J\r\u{7}".into(),
        ]);
        let mut out = Vec::new();
        table.write(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "ID  ERROR\n1   boom\\n2  COMPLETED\\u{1b}[2J\\r\\u{7}\n"
        );
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'));

        let mut out = Vec::new();
        pairs(&mut out, &[("error", "a\u{1b}]0;title\u{7}b".into())]).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "error  a\\u{1b}]0;title\\u{7}b\n"
        );
        assert_eq!(printable("plain text, ünïcode"), "plain text, ünïcode");
    }
}
