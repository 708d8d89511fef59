//! Output: aligned tables for people, JSON for programs (`-o json`).

use std::io::{self, Write};

use clap::ValueEnum;
use serde::Serialize;

/// The `-o` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns.
    Table,
    /// One JSON document.
    Json,
}

/// Writes `rows` under `headers`, each column as wide as its widest cell, two spaces apart.
pub fn write_table(out: &mut dyn Write, headers: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| -> String {
        let padded: Vec<String> = cells.zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        padded.join("  ").trim_end().to_owned()
    };
    writeln!(out, "{}", line(&mut headers.iter().copied()))?;
    for row in rows {
        writeln!(out, "{}", line(&mut row.iter().map(String::as_str)))?;
    }
    Ok(())
}

/// Writes `value` as pretty JSON.
pub fn write_json(out: &mut dyn Write, value: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell() -> io::Result<()> {
        let mut out = Vec::new();
        write_table(
            &mut out,
            &["NAME", "STATE"],
            &[vec!["a".into(), "ready".into()], vec!["longer-name".into(), "failed".into()]],
        )?;
        assert_eq!(String::from_utf8_lossy(&out), "NAME         STATE\na            ready\nlonger-name  failed\n");
        Ok(())
    }

    #[test]
    fn an_empty_table_still_has_its_header() -> io::Result<()> {
        let mut out = Vec::new();
        write_table(&mut out, &["NAME", "STATE"], &[])?;
        assert_eq!(String::from_utf8_lossy(&out), "NAME  STATE\n");
        Ok(())
    }
}
