//! JSONC/JSON5 text → a small tree that remembers where every value and key
//! stands, so that validation can name `line:column` for each error.

use jsonc_parser::ast;
use jsonc_parser::{CollectOptions, ParseOptions};

/// A value with the byte offset where it starts in the source text.
#[derive(Debug, Clone)]
pub struct Node {
    pub at: usize,
    pub value: Json,
}

/// An object member: the key keeps its own offset for unknown-key errors.
#[derive(Debug, Clone)]
pub struct Member {
    pub key: String,
    pub key_at: usize,
    pub node: Node,
}

#[derive(Debug, Clone)]
pub enum Json {
    Null,
    Bool(bool),
    /// The number as written; validation decides what it must be.
    Number(String),
    String(String),
    Array(Vec<Node>),
    Object(Vec<Member>),
}

impl Json {
    /// What a user calls this kind of value, for "expected X, found Y".
    pub fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Number(_) => "a number",
            Json::String(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }
}

/// A syntax error with its position.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub at: usize,
    pub message: String,
}

/// Parses JSONC as the Python ec2fleetd accepted it: comments, trailing
/// commas, and the rest of JSON5 (unquoted keys, single quotes, hex numbers).
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let options = ParseOptions {
        allow_missing_commas: false,
        ..ParseOptions::default()
    };
    let parsed =
        jsonc_parser::parse_to_ast(text, &CollectOptions::default(), &options).map_err(|e| {
            SyntaxError {
                at: e.range().start,
                message: e.kind().to_string(),
            }
        })?;
    match parsed.value {
        Some(value) => Ok(convert(value)),
        None => Err(SyntaxError {
            at: 0,
            message: "the file holds no JSON value".into(),
        }),
    }
}

fn convert(value: ast::Value<'_>) -> Node {
    match value {
        ast::Value::StringLit(s) => Node {
            at: s.range.start,
            value: Json::String(s.value.into_owned()),
        },
        ast::Value::NumberLit(n) => Node {
            at: n.range.start,
            value: Json::Number(n.value.to_string()),
        },
        ast::Value::BooleanLit(b) => Node {
            at: b.range.start,
            value: Json::Bool(b.value),
        },
        ast::Value::NullKeyword(n) => Node {
            at: n.range.start,
            value: Json::Null,
        },
        ast::Value::Array(a) => Node {
            at: a.range.start,
            value: Json::Array(a.elements.into_iter().map(convert).collect()),
        },
        ast::Value::Object(o) => Node {
            at: o.range.start,
            value: Json::Object(
                o.properties
                    .into_iter()
                    .map(|p| {
                        let key_at = match &p.name {
                            ast::ObjectPropName::String(s) => s.range.start,
                            ast::ObjectPropName::Word(w) => w.range.start,
                        };
                        Member {
                            key: p.name.into_string(),
                            key_at,
                            node: convert(p.value),
                        }
                    })
                    .collect(),
            ),
        },
    }
}

/// Turns byte offsets into 1-based `line:column` (columns count characters).
pub struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    pub fn position(&self, text: &str, at: usize) -> (usize, usize) {
        self.positions(text)(at)
    }

    /// [`LineIndex::position`] for many offsets: given in ascending order,
    /// each line's characters are counted once, so that a long line with
    /// many problems (a minified config) costs its length, not its length
    /// times the problems.
    pub fn positions<'a>(&'a self, text: &'a str) -> impl FnMut(usize) -> (usize, usize) + 'a {
        // The last offset counted: its line, where it stands, its column.
        let mut counted: Option<(usize, usize, usize)> = None;
        move |at| {
            let line = match self.starts.binary_search(&at) {
                Ok(i) => i,
                Err(i) => i - 1,
            };
            let start = self.starts[line];
            let end = at.min(text.len());
            let column = match counted {
                Some((l, from, column)) if l == line && from <= end => {
                    text.get(from..end).map(|s| column + s.chars().count())
                }
                _ => text.get(start..end).map(|s| s.chars().count()),
            };
            if let Some(column) = column {
                counted = Some((line, end, column));
            }
            (line + 1, column.unwrap_or(at - start) + 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_trailing_commas_and_json5_forms_parse() {
        let text = "// top\n{ a: 1, 'b': [true, null,], /* c */ \"c\": 0x10, }\n";
        let node = parse(text).unwrap();
        let Json::Object(members) = node.value else {
            panic!("not an object")
        };
        let keys: Vec<_> = members.iter().map(|m| m.key.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert!(matches!(&members[2].node.value, Json::Number(n) if n == "0x10"));
    }

    #[test]
    fn syntax_error_has_position() {
        let text = "{\n  \"a\": 1\n  \"b\": 2\n}";
        let err = parse(text).unwrap_err();
        let (line, col) = LineIndex::new(text).position(text, err.at);
        assert_eq!(line, 2, "{err:?}");
        assert!(err.message.contains("comma"), "{err:?}");
        assert!(col >= 1);
    }

    #[test]
    fn line_index_counts_characters() {
        let text = "ab\nçd x";
        let idx = LineIndex::new(text);
        assert_eq!(idx.position(text, 0), (1, 1));
        assert_eq!(idx.position(text, text.find('x').unwrap()), (2, 4));
    }

    #[test]
    fn positions_in_order_match_one_by_one() {
        let text = "aé\n\nçd x\nyz";
        let idx = LineIndex::new(text);
        let mut positions = idx.positions(text);
        // Every offset, inside a character and past the end included.
        for at in 0..text.len() + 3 {
            assert_eq!(positions(at), idx.position(text, at), "at {at}");
        }
    }
}
