//! Macro templates: `{name}` in argv, hostnames, record names and
//! notification text. A substituted value is always one whole string; it is
//! never split or handed to a shell.

use std::collections::BTreeMap;
use std::fmt;

/// Every macro a template may name. `ami-i` is the Python daemon's README
/// spelling of `instance_index`.
pub const MACROS: &[&str] = &[
    "domain",
    "instance_id",
    "instance_type",
    "instance_index",
    "placement_region",
    "placement_zone",
    "hypervisor",
    "primary_public_ipv4",
    "primary_public_ipv6",
    "primary_private_ipv4",
    "public_ipv4_list",
    "public_ipv6_list",
    "attach_source",
    "attach_op",
    "volume_id",
    "volume_pool",
    "attached_device",
    "daemon_state",
    "error",
    "interrupt_action",
    "interrupt_time",
    "transaction_id",
    "ts",
    "pid",
    "all_json",
];

const ALIASES: &[(&str, &str)] = &[("ami-i", "instance_index")];

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Macro(&'static str),
}

/// A parsed template; unknown macros are rejected when it is parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

/// Why a template could not be parsed, with the byte offset in the string.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateError {
    pub offset: usize,
    pub message: String,
}

impl Template {
    /// `{{` and `}}` stand for literal braces.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|&(_, n)| n) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|&(_, n)| n) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let rest = &text[i + 1..];
                    let Some(end) = rest.find('}') else {
                        return Err(TemplateError {
                            offset: i,
                            message: "unclosed '{' (write '{{' for a literal brace)".into(),
                        });
                    };
                    let name = &rest[..end];
                    let Some(canonical) = lookup(name) else {
                        return Err(TemplateError {
                            offset: i,
                            message: unknown_macro_message(name),
                        });
                    };
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Macro(canonical));
                    for _ in 0..=end {
                        chars.next();
                    }
                }
                '}' => {
                    return Err(TemplateError {
                        offset: i,
                        message: "unmatched '}' (write '}}' for a literal brace)".into(),
                    })
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Template { parts })
    }

    /// A template that is only text.
    pub fn literal(text: &str) -> Template {
        Template {
            parts: vec![Part::Text(text.to_string())],
        }
    }

    /// Fills in the macros; a macro without a value in `values` becomes "".
    pub fn render(&self, values: &MacroValues) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Macro(name) => out.push_str(values.get(name)),
            }
        }
        out
    }

    /// The template as an IAM wildcard pattern: its text, with `*` where
    /// a macro stands (whatever the macro may expand to).
    pub fn wildcard(&self) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.as_str(),
                Part::Macro(_) => "*",
            })
            .collect()
    }

    /// The text before any macro, when the template is all literal.
    pub fn as_literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Text(t)] => Some(t),
            _ => None,
        }
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in &self.parts {
            match part {
                Part::Text(t) => write!(f, "{}", t.replace('{', "{{").replace('}', "}}"))?,
                Part::Macro(m) => write!(f, "{{{m}}}")?,
            }
        }
        Ok(())
    }
}

fn lookup(name: &str) -> Option<&'static str> {
    MACROS.iter().copied().find(|m| *m == name).or_else(|| {
        ALIASES
            .iter()
            .find(|(alias, _)| *alias == name)
            .map(|(_, target)| *target)
    })
}

fn unknown_macro_message(name: &str) -> String {
    let candidates = MACROS
        .iter()
        .copied()
        .chain(ALIASES.iter().map(|(a, _)| *a));
    match super::suggest(name, candidates) {
        Some(s) => format!("unknown macro {{{name}}}; did you mean {{{s}}}?"),
        None => format!("unknown macro {{{name}}}"),
    }
}

/// The values macros expand to, by canonical name.
#[derive(Debug, Clone, Default)]
pub struct MacroValues {
    values: BTreeMap<&'static str, String>,
}

impl MacroValues {
    pub fn set(&mut self, name: &'static str, value: impl Into<String>) {
        debug_assert!(MACROS.contains(&name), "{name} is not a macro");
        self.values.insert(name, value.into());
    }

    /// `all_json` has a value only after [`MacroValues::seal`].
    pub fn get(&self, name: &str) -> &str {
        self.values.get(name).map_or("", String::as_str)
    }

    /// Every value as one JSON object: `{all_json}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.values
                .iter()
                .filter(|(k, _)| **k != "all_json")
                .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone())))
                .collect(),
        )
    }

    /// Sets `all_json` from the other values; call after the last change.
    pub fn seal(mut self) -> Self {
        let json = self.to_json().to_string();
        self.values.insert("all_json", json);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> MacroValues {
        let mut v = MacroValues::default();
        v.set("instance_index", "3");
        v.set("domain", "my world; rm -rf /");
        v
    }

    #[test]
    fn renders_macros_and_aliases() {
        let t = Template::parse("node-{ami-i}.{instance_index}.example.com").unwrap();
        assert_eq!(t.render(&values()), "node-3.3.example.com");
    }

    #[test]
    fn value_is_kept_whole() {
        let t = Template::parse("{domain}").unwrap();
        assert_eq!(t.render(&values()), "my world; rm -rf /");
    }

    #[test]
    fn escaped_braces_are_literal() {
        let t = Template::parse("{{\"a\": \"{domain}\"}}").unwrap();
        assert_eq!(t.render(&values()), "{\"a\": \"my world; rm -rf /\"}");
        assert_eq!(Template::parse(&t.to_string()).unwrap(), t);
    }

    #[test]
    fn unknown_macro_suggests() {
        let err = Template::parse("x{instance_idx}").unwrap_err();
        assert_eq!(err.offset, 1);
        assert!(
            err.message.contains("did you mean {instance_id}"),
            "{}",
            err.message
        );
    }

    #[test]
    fn unbalanced_braces_are_errors() {
        assert!(Template::parse("{domain").is_err());
        assert!(Template::parse("a}b").is_err());
    }

    #[test]
    fn all_json_holds_every_value() {
        let v = values().seal();
        let t = Template::parse("{all_json}").unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&t.render(&v)).unwrap();
        assert_eq!(parsed["instance_index"], "3");
    }
}
