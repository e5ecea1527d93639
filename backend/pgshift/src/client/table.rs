//! Command-line layer (the API client): aligned text tables for people (`--json` is for programs).

/// Renders `rows` under `headers`, each column as wide as its widest cell, two spaces apart,
/// without trailing spaces.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let width = widths.get(i).copied().unwrap_or(0);
            line.extend(std::iter::repeat_n(
                ' ',
                width.saturating_sub(cell.chars().count()),
            ));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let text = render(
            &["NAME", "STATE"],
            &[
                vec!["shop".into(), "synced".into()],
                vec!["inventory".into(), "copying".into()],
            ],
        );
        assert_eq!(
            text,
            "NAME       STATE\nshop       synced\ninventory  copying\n"
        );
    }
}
