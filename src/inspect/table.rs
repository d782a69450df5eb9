//! The tables of the inspect reports, built once and rendered as aligned text (the
//! terminal report) or as an HTML table (the `--html` page), so both show the same
//! columns and the same numbers.

use crate::markup::escape;
use std::fmt::Write;

/// Column headings, rows of cells, and which columns hold numbers (right-aligned).
#[derive(Debug, Default)]
pub struct Table {
    pub head: Vec<&'static str>,
    pub numeric: Vec<bool>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// `head` names the columns; a heading starting with `>` marks a numeric column.
    pub fn new(head: &[&'static str]) -> Table {
        Table {
            head: head.iter().map(|h| h.trim_start_matches('>')).collect(),
            numeric: head.iter().map(|h| h.starts_with('>')).collect(),
            rows: vec![],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.head.len(), "one cell per column");
        self.rows.push(cells);
    }

    /// Indented by two spaces, columns padded to their widest cell; the last column is
    /// not padded (it holds free text such as node names).
    pub fn text(&self) -> String {
        let width = |c: usize| {
            let cells = self.rows.iter().map(|r| r[c].chars().count());
            cells.chain([self.head[c].len()]).max().unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.head.len()).map(width).collect();
        let line = |cells: &[&str]| {
            let mut o = String::from(" ");
            for (c, cell) in cells.iter().enumerate() {
                let w = if c + 1 == cells.len() && !self.numeric[c] { 0 } else { widths[c] };
                let _ = if self.numeric[c] { write!(o, " {cell:>w$}") } else { write!(o, " {cell:<w$}") };
            }
            o.trim_end().to_string() + "\n"
        };
        let mut o = line(&self.head);
        for r in &self.rows {
            o += &line(&r.iter().map(String::as_str).collect::<Vec<_>>());
        }
        o
    }

    pub fn html(&self) -> String {
        let class = |c: usize| if self.numeric[c] { " class=\"num\"" } else { "" };
        let mut o = String::from("<table>\n<tr>");
        for (c, h) in self.head.iter().enumerate() {
            let _ = write!(o, "<th{}>{}</th>", class(c), escape(h));
        }
        o.push_str("</tr>\n");
        for r in &self.rows {
            o.push_str("<tr>");
            for (c, cell) in r.iter().enumerate() {
                let _ = write!(o, "<td{}>{}</td>", class(c), escape(cell));
            }
            o.push_str("</tr>\n");
        }
        o.push_str("</table>\n");
        o
    }
}

/// Labelled values (`source`, `mode`, ...): `label  value` lines in text, a two-column
/// table in HTML.
pub type Facts = Vec<(&'static str, String)>;

pub fn facts_text(facts: &Facts) -> String {
    let w = facts.iter().map(|(k, _)| k.len()).max().unwrap_or(0).max(10);
    facts.iter().map(|(k, v)| format!("{k:<w$} {v}\n")).collect()
}

pub fn facts_html(facts: &Facts) -> String {
    let rows: String =
        facts.iter().map(|(k, v)| format!("<tr><th>{}</th><td>{}</td></tr>\n", escape(k), escape(v))).collect();
    format!("<table class=\"facts\">\n{rows}</table>\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_aligns_columns_and_html_escapes_cells() {
        let mut t = Table::new(&["name", ">count", "note"]);
        t.row(vec!["a".into(), "5".into(), "x<y".into()]);
        t.row(vec!["long name".into(), "12345".into(), "".into()]);
        assert_eq!(t.text(), "  name      count note\n  a             5 x<y\n  long name 12345\n");
        let h = t.html();
        assert!(h.contains("<th class=\"num\">count</th>") && h.contains("<td>x&lt;y</td>"), "{h}");
        assert_eq!(facts_text(&vec![("mode", "split".into())]), "mode       split\n");
    }
}
