//! Engine layer (target schema): reading `pg_restore`'s words: the lines of its `--list` (one
//! archive entry each: catalog, object id, kind, schema, name), and the SQL it writes for a list,
//! split back into one piece per entry by the `-- Name: …; Type: …; Schema: …` header it puts
//! before each (it writes privileges after everything else, so the order of the output is not
//! the list's).

/// The kinds of entry `pg_restore --list` names, longest first so that a kind made of several
/// words is not taken for a shorter one.
const KINDS: &[&str] = &[
    "MATERIALIZED VIEW DATA",
    "SEQUENCE OWNED BY",
    "MATERIALIZED VIEW",
    "DEFAULT ACL",
    "CHECK CONSTRAINT",
    "FK CONSTRAINT",
    "INDEX ATTACH",
    "TABLE ATTACH",
    "ROW SECURITY",
    "SECURITY LABEL",
    "TEXT SEARCH CONFIGURATION",
    "TEXT SEARCH DICTIONARY",
    "TEXT SEARCH PARSER",
    "TEXT SEARCH TEMPLATE",
    "FOREIGN DATA WRAPPER",
    "FOREIGN TABLE",
    "SERVER",
    "USER MAPPING",
    "OPERATOR CLASS",
    "OPERATOR FAMILY",
    "PROCEDURAL LANGUAGE",
    "PUBLICATION TABLE",
    "PUBLICATION TABLES IN SCHEMA",
    "EVENT TRIGGER",
    "SEQUENCE SET",
    "TABLE DATA",
    "SHELL TYPE",
    "ACCESS METHOD",
    "CONSTRAINT",
    "COLLATION",
    "CONVERSION",
    "AGGREGATE",
    "PROCEDURE",
    "FUNCTION",
    "OPERATOR",
    "SEQUENCE",
    "STATISTICS",
    "EXTENSION",
    "PUBLICATION",
    "SUBSCRIPTION",
    "TRANSFORM",
    "TRIGGER",
    "COMMENT",
    "DEFAULT",
    "DOMAIN",
    "SCHEMA",
    "POLICY",
    "INDEX",
    "TABLE",
    "VIEW",
    "TYPE",
    "CAST",
    "RULE",
    "ACL",
];

/// What pg_restore's output files an entry's SQL under: (kind, schema, name).
pub type Key = (String, String, String);

/// One line of `pg_restore --list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The line as pg_restore wrote it (given back to it in `--use-list`).
    pub line: String,
    /// The catalog holding the object (`pg_class`'s oid 1259, …); 0 for entries that are not an
    /// object of their own (privileges, comments, attachments).
    pub catalog: u32,
    pub oid: u32,
    /// `TABLE`, `FK CONSTRAINT`, `ACL`, …
    pub kind: String,
    /// `-` when the object lives in no schema.
    pub schema: String,
    /// pg_dump's name for the entry: `orders`, `orders orders_pkey`, `TABLE orders`, `f(integer)`.
    pub tag: String,
}

impl Entry {
    /// The key its SQL is found under in pg_restore's output.
    pub fn key(&self) -> Key {
        (self.kind.clone(), self.schema.clone(), self.tag.clone())
    }

    /// How people read it: `INDEX shop.orders_customer_idx`, `FK CONSTRAINT orders_customer_fkey
    /// ON shop.orders`, `ACL ON TABLE shop.orders`.
    pub fn display(&self) -> String {
        let on_table = matches!(
            self.kind.as_str(),
            "CONSTRAINT"
                | "CHECK CONSTRAINT"
                | "FK CONSTRAINT"
                | "TRIGGER"
                | "RULE"
                | "POLICY"
                | "DEFAULT"
        );
        match (self.schema.as_str(), self.tag.split_once(' ')) {
            ("-", _) => format!("{} {}", self.kind, self.tag),
            (schema, Some((table, name))) if on_table => {
                format!("{} {name} ON {schema}.{table}", self.kind)
            }
            (schema, Some((what, name))) if matches!(self.kind.as_str(), "ACL" | "COMMENT") => {
                format!("{} ON {what} {schema}.{name}", self.kind)
            }
            (schema, _) => format!("{} {schema}.{}", self.kind, self.tag),
        }
    }
}

/// Parses `pg_restore --list`'s output; comment lines (`;`) are skipped.
pub fn parse_list(text: &str) -> Vec<Entry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Entry> {
    if line.starts_with(';') || line.trim().is_empty() {
        return None;
    }
    let (_, rest) = line.split_once("; ")?;
    let mut words = rest.splitn(3, ' ');
    let catalog = words.next()?.parse().ok()?;
    let oid = words.next()?.parse().ok()?;
    let rest = words.next()?;
    let kind = KINDS
        .iter()
        .find(|k| rest.starts_with(*k) && rest[k.len()..].starts_with(' '))?;
    let rest = &rest[kind.len() + 1..];
    let (schema, rest) = rest.split_once(' ')?;
    // The owner is the last word (empty for an extension).
    let (tag, _owner) = rest.rsplit_once(' ').unwrap_or((rest, ""));
    Some(Entry {
        line: line.to_string(),
        catalog,
        oid,
        kind: (*kind).to_string(),
        schema: schema.to_string(),
        tag: tag.to_string(),
    })
}

/// pg_restore's SQL for some entries: the session settings it starts with, and each entry's
/// statements under its key.
#[derive(Debug, Default)]
pub struct Script {
    /// `SET …;` and `SELECT pg_catalog.set_config('search_path', '', false);`: run before any
    /// entry, in the same session.
    pub preamble: Vec<String>,
    pub pieces: Vec<(Key, String)>,
}

impl Script {
    /// Takes out the statements of the entry with `key` (the first left, if several).
    pub fn take(&mut self, key: &Key) -> Option<String> {
        let at = self.pieces.iter().position(|(k, _)| k == key)?;
        Some(self.pieces.remove(at).1)
    }
}

/// A header line's key: `-- Name: orders orders_pkey; Type: CONSTRAINT; Schema: shop; Owner: -`.
fn header_key(line: &str) -> Option<Key> {
    let rest = line.strip_prefix("-- Name: ")?;
    let (name, rest) = rest.split_once("; Type: ")?;
    let (kind, rest) = rest.split_once("; Schema: ")?;
    let (schema, _) = rest.split_once("; Owner: ")?;
    Some((kind.to_string(), schema.to_string(), name.to_string()))
}

/// Splits pg_restore's output into the preamble and one piece per entry. `SET` lines written
/// just before an entry's header (`SET default_table_access_method = heap;`) go with that entry;
/// psql's `\restrict` lines are left out (pgshift runs the SQL itself).
pub fn split(sql: &str) -> Script {
    let lines: Vec<&str> = sql
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect();
    let mut script = Script::default();
    let mut current: Option<(Key, Vec<&str>)> = None;
    let mut preamble: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let header = (lines[i] == "--")
            .then(|| lines.get(i + 1).and_then(|l| header_key(l)))
            .flatten()
            .filter(|_| lines.get(i + 2) == Some(&"--"));
        if let Some(key) = header {
            // SET lines (and blank lines) at the end of what came before belong to this entry.
            let in_entry = current.is_some();
            let before = match &mut current {
                Some((_, body)) => body,
                None => &mut preamble,
            };
            let mut carried = Vec::new();
            while let Some(last) = before.last() {
                if last.trim().is_empty() {
                    before.pop();
                } else if last.starts_with("SET ") && in_entry {
                    carried.push(before.pop().unwrap_or_default());
                } else {
                    break;
                }
            }
            carried.reverse();
            if let Some((k, body)) = current.take() {
                script.pieces.push((k, finish(&body)));
            }
            current = Some((key, carried));
            i += 3;
            continue;
        }
        match &mut current {
            Some((_, body)) => body.push(lines[i]),
            None => preamble.push(lines[i]),
        }
        i += 1;
    }
    if let Some((k, body)) = current.take() {
        script.pieces.push((k, finish(&body)));
    }
    script.preamble = preamble
        .iter()
        .filter(|l| l.starts_with("SET ") || l.starts_with("SELECT pg_catalog.set_config"))
        .map(|l| l.to_string())
        .collect();
    script
}

/// An entry's statements without pg_restore's comments around them.
fn finish(body: &[&str]) -> String {
    let mut lines: Vec<&str> = body.to_vec();
    // The closing banner of the whole output.
    if let Some(at) = lines
        .iter()
        .position(|l| *l == "-- PostgreSQL database dump complete")
    {
        lines.truncate(at.saturating_sub(1));
    }
    lines.join("\n").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_lines_parse() {
        let e = parse_line(
            "3357; 2606 16529 FK CONSTRAINT shop orders orders_customer_id_fkey postgres",
        )
        .unwrap();
        assert_eq!((e.catalog, e.oid), (2606, 16529));
        assert_eq!(e.kind, "FK CONSTRAINT");
        assert_eq!(e.schema, "shop");
        assert_eq!(e.tag, "orders orders_customer_id_fkey");
        let e = parse_line("2; 3079 16385 EXTENSION - citext ").unwrap();
        assert_eq!(
            (e.kind.as_str(), e.schema.as_str(), e.tag.as_str()),
            ("EXTENSION", "-", "citext")
        );
        let e = parse_line("3513; 0 0 SEQUENCE OWNED BY shop customers_id_seq postgres").unwrap();
        assert_eq!(e.kind, "SEQUENCE OWNED BY");
        assert_eq!(e.tag, "customers_id_seq");
        let e =
            parse_line("283; 1255 16562 FUNCTION shop order_count(bigint, text) postgres").unwrap();
        assert_eq!(e.tag, "order_count(bigint, text)");
        assert!(parse_line(";     dbname: src").is_none());
    }

    #[test]
    fn output_splits_by_entry() {
        let sql = "--\n-- PostgreSQL database dump\n--\n\n\\restrict abc\n\nSET statement_timeout = 0;\nSELECT pg_catalog.set_config('search_path', '', false);\n\n--\n-- Name: shop; Type: SCHEMA; Schema: -; Owner: -\n--\n\nCREATE SCHEMA shop;\n\n\nSET default_table_access_method = heap;\n\n--\n-- Name: orders; Type: TABLE; Schema: shop; Owner: -\n--\n\nCREATE TABLE shop.orders (\n    id bigint\n);\n\n\n--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict abc\n";
        let mut s = split(sql);
        assert_eq!(
            s.preamble,
            vec![
                "SET statement_timeout = 0;".to_string(),
                "SELECT pg_catalog.set_config('search_path', '', false);".to_string()
            ]
        );
        let key = |k: &str, s: &str, n: &str| (k.to_string(), s.to_string(), n.to_string());
        assert_eq!(
            s.take(&key("SCHEMA", "-", "shop")).unwrap(),
            "CREATE SCHEMA shop;"
        );
        assert_eq!(
            s.take(&key("TABLE", "shop", "orders")).unwrap(),
            "SET default_table_access_method = heap;\n\nCREATE TABLE shop.orders (\n    id bigint\n);"
        );
        assert!(s.pieces.is_empty());
    }
}
