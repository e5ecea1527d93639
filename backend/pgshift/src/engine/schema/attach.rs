//! Engine layer (target schema): the archive entries that are no object of their own (comments,
//! privileges, a partition's or a partition index's attachment, a sequence's owner) and carry
//! no object id in `pg_restore --list`: they belong to the object whose kind, schema and name
//! their own name repeats, and are built with it.

use super::toc::Entry;

/// An attachment as [`attachments`] names it: (kind, schema, name) and whether the name is a
/// prefix (a column's comment: `COLUMN orders.`).
pub type Wanted = (String, String, String, bool);

/// The entries that are not objects of their own (comments, privileges, attachments) that
/// belong to `entry`: their (kind, schema, tag), or a tag prefix when the last field is true.
pub fn attachments(entry: &Entry) -> Vec<Wanted> {
    let (s, t) = (entry.schema.as_str(), entry.tag.as_str());
    let exact = |kind: &str, tag: String| (kind.to_string(), s.to_string(), tag, false);
    let prefix = |kind: &str, tag: String| (kind.to_string(), s.to_string(), tag, true);
    let split = || t.split_once(' ').unwrap_or((t, ""));
    match entry.kind.as_str() {
        "TABLE" | "FOREIGN TABLE" => vec![
            exact("COMMENT", format!("TABLE {t}")),
            exact("COMMENT", format!("FOREIGN TABLE {t}")),
            prefix("COMMENT", format!("COLUMN {t}.")),
            exact("ACL", format!("TABLE {t}")),
            prefix("ACL", format!("COLUMN {t}.")),
            exact("TABLE ATTACH", t.to_string()),
        ],
        "VIEW" | "MATERIALIZED VIEW" => vec![
            exact("COMMENT", format!("{} {t}", entry.kind)),
            prefix("COMMENT", format!("COLUMN {t}.")),
            exact("ACL", format!("TABLE {t}")),
            prefix("ACL", format!("COLUMN {t}.")),
        ],
        "SEQUENCE" => vec![
            exact("SEQUENCE OWNED BY", t.to_string()),
            exact("COMMENT", format!("SEQUENCE {t}")),
            exact("ACL", format!("SEQUENCE {t}")),
        ],
        "INDEX" => vec![
            exact("INDEX ATTACH", t.to_string()),
            exact("COMMENT", format!("INDEX {t}")),
        ],
        "CONSTRAINT" | "CHECK CONSTRAINT" | "FK CONSTRAINT" => {
            let (table, name) = split();
            vec![
                exact("INDEX ATTACH", name.to_string()),
                exact("COMMENT", format!("CONSTRAINT {name} ON {table}")),
            ]
        }
        "TRIGGER" | "RULE" | "POLICY" => {
            let (table, name) = split();
            vec![exact(
                "COMMENT",
                format!("{} {name} ON {table}", entry.kind),
            )]
        }
        "FUNCTION" | "PROCEDURE" | "AGGREGATE" => vec![
            exact("COMMENT", format!("{} {t}", entry.kind)),
            exact("ACL", format!("{} {t}", entry.kind)),
        ],
        "TYPE" | "DOMAIN" => vec![
            exact("COMMENT", format!("{} {t}", entry.kind)),
            exact("ACL", format!("TYPE {t}")),
            exact("ACL", format!("DOMAIN {t}")),
        ],
        "SCHEMA" => vec![
            ("COMMENT".into(), "-".into(), format!("SCHEMA {t}"), false),
            ("ACL".into(), "-".into(), format!("SCHEMA {t}"), false),
        ],
        "EXTENSION" => vec![(
            "COMMENT".into(),
            "-".into(),
            format!("EXTENSION {t}"),
            false,
        )],
        "STATISTICS" => vec![exact("COMMENT", format!("STATISTICS {t}"))],
        _ => Vec::new(),
    }
}

/// Whether `candidate` (an entry with no object of its own) is one of `wanted`.
pub fn attached(candidate: &Entry, wanted: &Wanted) -> bool {
    let (kind, schema, tag, is_prefix) = wanted;
    candidate.kind == *kind
        && candidate.schema == *schema
        && if *is_prefix {
            candidate.tag.starts_with(tag.as_str())
        } else {
            candidate.tag == *tag
        }
}
