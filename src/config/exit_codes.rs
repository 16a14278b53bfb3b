//! The `ec` exit-code spec: which exit codes of a hook count as success.

use std::fmt;

/// `"0,1"`, `"0-127"`, `"0, 2-5"`, a bare number, or `null` (no check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitCodes {
    /// `null`: any exit code is success (a death by signal is still failure).
    Any,
    /// Inclusive ranges; a single code is a range of one.
    Ranges(Vec<(i32, i32)>),
}

impl Default for ExitCodes {
    fn default() -> Self {
        ExitCodes::Ranges(vec![(0, 0)])
    }
}

impl ExitCodes {
    pub fn parse(spec: &str) -> Result<ExitCodes, String> {
        let mut ranges = Vec::new();
        for item in spec.split(',') {
            let item = item.trim();
            if item.is_empty() {
                return Err(format!("empty item in exit-code list {spec:?}"));
            }
            let (lo, hi) = match item.split_once('-') {
                Some((a, b)) => (parse_code(a)?, parse_code(b)?),
                None => {
                    let c = parse_code(item)?;
                    (c, c)
                }
            };
            if lo > hi {
                return Err(format!("range {item:?} runs backwards"));
            }
            ranges.push((lo, hi));
        }
        Ok(ExitCodes::Ranges(ranges))
    }

    pub fn accepts(&self, code: i32) -> bool {
        match self {
            ExitCodes::Any => true,
            ExitCodes::Ranges(r) => r.iter().any(|&(lo, hi)| (lo..=hi).contains(&code)),
        }
    }
}

fn parse_code(s: &str) -> Result<i32, String> {
    let s = s.trim();
    match s.parse::<i32>() {
        Ok(c) if (0..=255).contains(&c) => Ok(c),
        _ => Err(format!("{s:?} is not an exit code (0 to 255)")),
    }
}

impl fmt::Display for ExitCodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitCodes::Any => write!(f, "any"),
            ExitCodes::Ranges(r) => {
                let items: Vec<String> = r
                    .iter()
                    .map(|&(lo, hi)| {
                        if lo == hi {
                            lo.to_string()
                        } else {
                            format!("{lo}-{hi}")
                        }
                    })
                    .collect();
                write!(f, "{}", items.join(","))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_ranges() {
        let ec = ExitCodes::parse("0, 2-5,127").unwrap();
        assert!(ec.accepts(0) && ec.accepts(3) && ec.accepts(127));
        assert!(!ec.accepts(1) && !ec.accepts(6));
        assert_eq!(ec.to_string(), "0,2-5,127");
    }

    #[test]
    fn default_is_zero_only() {
        assert!(ExitCodes::default().accepts(0));
        assert!(!ExitCodes::default().accepts(1));
    }

    #[test]
    fn bad_specs_are_rejected() {
        for bad in ["", "a", "5-2", "0,,1", "256", "-1"] {
            assert!(ExitCodes::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
