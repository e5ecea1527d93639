//! Engine layer: a source partition's bound, carried by a truncate event so the target can empty
//! exactly the rows that partition held, whatever the target's own partitioning (one table, other
//! bounds, other names).
//!
//! The bound is PostgreSQL's own text of the partition constraint
//! (`pg_get_partition_constraintdef`), e.g. `((at IS NOT NULL) AND (at >= '2025-01-01'::date))`.
//! It is SQL, and it arrives through the source's event table: before the target runs it as a
//! `WHERE` clause it must be plain, made only of the table's own columns, literals, casts,
//! operators and the words of a boolean condition. Anything else (a function call, a subquery,
//! `OPERATOR(schema.op)`, another relation's name) is refused, so that whoever can write
//! events on the source can at worst delete rows of this table on the target, never run code.

/// A truncate or appearance event's payload: the relation's quoted name, then, for a partition,
/// its bound on the next line.
pub struct TruncatedRelation<'a> {
    pub relation: &'a str,
    pub bound: Option<&'a str>,
}

impl<'a> TruncatedRelation<'a> {
    pub fn parse(data: &'a str) -> Self {
        match data.split_once('\n') {
            Some((relation, bound)) if !bound.trim().is_empty() => Self {
                relation,
                bound: Some(bound),
            },
            Some((relation, _)) => Self {
                relation,
                bound: None,
            },
            None => Self {
                relation: data,
                bound: None,
            },
        }
    }
}

/// Words a partition constraint may use besides column names and the type names of casts.
const CONDITION_WORDS: &[&str] = &[
    "and", "or", "not", "is", "null", "true", "false", "in", "any", "all", "array", "distinct",
    "from",
];

/// Words that continue a multi-word type name after `::` (`timestamp with time zone`,
/// `character varying`, `double precision`, `bit varying`).
const TYPE_NAME_WORDS: &[&str] = &["with", "without", "time", "zone", "varying", "precision"];

/// Whether `bound` is a plain condition over `columns` (see the module doc).
pub fn is_plain(bound: &str, columns: &[&str]) -> bool {
    let chars: Vec<char> = bound.chars().collect();
    let mut i = 0;
    // After `::` one name (maybe schema-qualified, maybe with a typmod or `[]`) names a type;
    // only the words of PostgreSQL's multi-word type names may follow it.
    let mut in_cast = false;
    let mut cast_words = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            // A string literal; '' is an escaped quote. The constraint's deparser never writes E''.
            i += 1;
            loop {
                match chars.get(i) {
                    None => return false,
                    Some('\'') if chars.get(i + 1) == Some(&'\'') => i += 2,
                    Some('\'') => break,
                    Some(_) => i += 1,
                }
            }
            i += 1;
            in_cast = false;
        } else if c == '"' {
            let start = i + 1;
            i += 1;
            let mut name = String::new();
            loop {
                match chars.get(i) {
                    None => return false,
                    Some('"') if chars.get(i + 1) == Some(&'"') => {
                        name.push('"');
                        i += 2
                    }
                    Some('"') => break,
                    Some(ch) => {
                        name.push(*ch);
                        i += 1
                    }
                }
            }
            let _ = start;
            i += 1;
            if in_cast && cast_words == 0 {
                cast_words += 1;
                continue;
            }
            in_cast = false;
            if !columns.contains(&name.as_str()) || next_non_space(&chars, i) == Some('(') {
                return false;
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let lower = word.to_lowercase();
            // `E'…'`, `U&'…'`, `B'…'`, `X'…'`: a prefixed literal lexes differently.
            if chars.get(i) == Some(&'\'') {
                return false;
            }
            if in_cast {
                // Type names: `date`, `character varying`, `pg_catalog.int4`, `public.mood`.
                if cast_words == 0 || TYPE_NAME_WORDS.contains(&lower.as_str()) {
                    cast_words += 1;
                    continue;
                }
                in_cast = false;
            }
            if CONDITION_WORDS.contains(&lower.as_str()) {
                continue;
            }
            // A column, never called: `name(` would be a function.
            if !columns.contains(&word.as_str()) || next_non_space(&chars, i) == Some('(') {
                return false;
            }
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            in_cast = true;
            cast_words = 0;
            i += 2;
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            in_cast = false;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '.' && in_cast && cast_words == 1 {
            // `schema.type`: the type's own name comes next.
            cast_words = 0;
            i += 1;
        } else if "()[],".contains(c) {
            // A parenthesis ends a type name unless it holds a typmod right after one.
            if c == '(' && in_cast && cast_words > 0 {
                // typmod: digits and commas up to ')'.
                i += 1;
                while i < chars.len()
                    && (chars[i].is_ascii_digit() || chars[i] == ',' || chars[i] == ' ')
                {
                    i += 1;
                }
                if chars.get(i) != Some(&')') {
                    return false;
                }
                i += 1;
                continue;
            }
            if (c == '[' || c == ']') && in_cast && cast_words > 0 {
                i += 1;
                continue;
            }
            in_cast = false;
            i += 1;
        } else if "<>=!~+-*/%".contains(c) {
            // A comment hides what follows from PostgreSQL but not from this scanner.
            if (c == '-' && chars.get(i + 1) == Some(&'-'))
                || (c == '/' && chars.get(i + 1) == Some(&'*'))
            {
                return false;
            }
            in_cast = false;
            i += 1;
        } else {
            // `;`, `$`, `@`, `#`, `|`, `&`, `^`, `?`, backslash, `{`...: nothing a bound needs.
            return false;
        }
    }
    true
}

fn next_non_space(chars: &[char], mut i: usize) -> Option<char> {
    while i < chars.len() && chars[i].is_whitespace() {
        i += 1;
    }
    chars.get(i).copied()
}

#[cfg(test)]
mod tests {
    use super::{is_plain, TruncatedRelation};

    const COLS: &[&str] = &["id", "at", "region", "Mixed Case"];

    #[test]
    fn postgres_bounds_are_plain() {
        for bound in [
            "((at IS NOT NULL) AND (at >= '2025-01-01'::date) AND (at < '2026-01-01'::date))",
            "((region IS NOT NULL) AND (region = ANY (ARRAY['eu'::text, 'it''s'::text])))",
            "(NOT ((region IS NOT NULL) AND (region = ANY (ARRAY['eu'::text, 'us'::text]))))",
            "((\"Mixed Case\" IS NOT NULL) AND (\"Mixed Case\" = 'x'::character varying(10)))",
            "((id IS NOT NULL) AND (id >= 10) AND (id < '-5'::integer))",
            "((at IS NOT NULL) AND (at >= '2025-01-01 00:00:00+00'::timestamp with time zone))",
            "((region)::text = 'a'::public.mood[])",
        ] {
            assert!(is_plain(bound, COLS), "{bound}");
        }
    }

    #[test]
    fn code_and_other_names_are_refused() {
        for bound in [
            "satisfies_hash_partition('16384'::oid, 4, 0, id)",
            "(id = (SELECT 1))",
            "(id OPERATOR(evil.=) 1)",
            "(lower(region) = 'a'::text)",
            "(id = 1); DROP TABLE t",
            "(other = 1)",
            "(id = $1)",
            "(\"id\"\"x\" = 1)",
            "(id = pg_catalog.pg_sleep (1))",
            "('unterminated",
            "('x'::date AND pg_sleep(1) IS NULL)",
            "(id = 1 /* ' */ OR nextval(16384::regclass) > 0 /* ' */)",
            "(id = 1 -- '\n OR true)",
            "(id = e'\\' OR true)",
            "('x'::date AND other IS NULL)",
            "('x'::\"public\".\"t\" \"other\")",
        ] {
            assert!(!is_plain(bound, COLS), "{bound}");
        }
    }

    #[test]
    fn payloads_split_into_name_and_bound() {
        let t = TruncatedRelation::parse("\"public\".\"p\"\n(id > 1)");
        assert_eq!(
            (t.relation, t.bound),
            ("\"public\".\"p\"", Some("(id > 1)"))
        );
        let t = TruncatedRelation::parse("\"public\".\"t\"");
        assert_eq!((t.relation, t.bound), ("\"public\".\"t\"", None));
    }
}
