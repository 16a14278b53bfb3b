//! User data that carries more than ec2fleetd's config: multi-part MIME,
//! as cloud-init reads it (a `text/cloud-config` part, scripts, …). The
//! config is the part of type `application/x-ec2fleetd`, or the one named
//! `NAME.jsonc` for the daemon named NAME; cloud-init ignores a type it
//! does not know, so one launch template carries both.

/// The media type of the part that holds the config.
pub const PART_TYPE: &str = "application/x-ec2fleetd";

/// Whether `data` is a MIME message rather than a config: it opens with a
/// header (`Content-Type:` or `MIME-Version:`).
pub fn is_mime(data: &[u8]) -> bool {
    let start = String::from_utf8_lossy(&data[..data.len().min(64)]).to_ascii_lowercase();
    let start = start.trim_start();
    start.starts_with("content-type:") || start.starts_with("mime-version:")
}

/// One part, for the error that lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub content_type: String,
    pub filename: Option<String>,
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.filename {
            Some(name) => write!(f, "{} ({name})", self.content_type),
            None => f.write_str(&self.content_type),
        }
    }
}

/// The config text in the MIME message `data`, for the daemon `name`:
/// the one part of type [`PART_TYPE`] or named `NAME.jsonc`; among several,
/// the one named `NAME.jsonc`. Otherwise an error that lists the parts.
pub fn config_part(data: &[u8], name: &str) -> Result<String, String> {
    let message = mailparse::parse_mail(data)
        .map_err(|e| format!("the MIME user data does not parse: {e}"))?;
    let mut leaves = Vec::new();
    collect(&message, &mut leaves);
    let wanted = format!("{name}.jsonc");
    let described: Vec<Part> = leaves.iter().map(|m| describe(m)).collect();
    let candidates: Vec<usize> = described
        .iter()
        .enumerate()
        .filter(|(_, p)| p.content_type == PART_TYPE || p.filename.as_deref() == Some(&wanted))
        .map(|(i, _)| i)
        .collect();
    let chosen = match candidates.as_slice() {
        [one] => Some(*one),
        [] => None,
        several => several
            .iter()
            .copied()
            .find(|i| described[*i].filename.as_deref() == Some(&wanted)),
    };
    let list = || {
        described
            .iter()
            .map(Part::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(i) = chosen else {
        return Err(if candidates.is_empty() {
            format!(
                "the MIME user data has no part of type {PART_TYPE} or named {wanted}; its parts: {}",
                list()
            )
        } else {
            format!(
                "the MIME user data has several {PART_TYPE} parts and none named {wanted} (this daemon's name is {name:?}); its parts: {}",
                list()
            )
        });
    };
    leaves[i]
        .get_body()
        .map_err(|e| format!("the part {} does not decode: {e}", described[i]))
}

/// The parts that are not themselves multi-part, in order.
fn collect<'a>(m: &'a mailparse::ParsedMail<'a>, out: &mut Vec<&'a mailparse::ParsedMail<'a>>) {
    if m.subparts.is_empty() {
        out.push(m);
    } else {
        for p in &m.subparts {
            collect(p, out);
        }
    }
}

fn describe(m: &mailparse::ParsedMail<'_>) -> Part {
    let disposition = m.get_content_disposition();
    let filename = disposition
        .params
        .get("filename")
        .or_else(|| m.ctype.params.get("name"))
        .cloned();
    Part {
        content_type: m.ctype.mimetype.to_ascii_lowercase(),
        filename,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message as cloud-init's `make-mime` and Terraform's
    /// `cloudinit_config` write it.
    fn message(parts: &[(&str, Option<&str>, &str, bool)]) -> String {
        let mut m = String::from(
            "Content-Type: multipart/mixed; boundary=\"==BOUNDARY==\"\nMIME-Version: 1.0\n\n",
        );
        for (kind, name, body, base64) in parts {
            m.push_str("--==BOUNDARY==\n");
            m.push_str(&format!(
                "Content-Type: {kind}; charset=\"us-ascii\"\nMIME-Version: 1.0\n"
            ));
            if *base64 {
                m.push_str("Content-Transfer-Encoding: base64\n");
            } else {
                m.push_str("Content-Transfer-Encoding: 7bit\n");
            }
            if let Some(n) = name {
                m.push_str(&format!(
                    "Content-Disposition: attachment; filename=\"{n}\"\n"
                ));
            }
            m.push('\n');
            if *base64 {
                assert_eq!(*body, CONFIG, "only CONFIG is given in base64");
                m.push_str(CONFIG_BASE64);
            } else {
                m.push_str(body);
            }
            m.push('\n');
        }
        m.push_str("--==BOUNDARY==--\n");
        m
    }

    const CONFIG: &str = "{ \"domains\": { \"game\": {} } }";
    const CONFIG_BASE64: &str = "eyAiZG9tYWlucyI6IHsgImdhbWUiOiB7fSB9IH0=";

    #[test]
    fn the_ec2fleetd_part_is_the_config() {
        let m = message(&[
            (
                "text/cloud-config",
                Some("cloud-config.yaml"),
                "#cloud-config\npackages: [jq]",
                false,
            ),
            (PART_TYPE, Some("game.jsonc"), CONFIG, true),
        ]);
        assert!(is_mime(m.as_bytes()));
        assert!(!is_mime(CONFIG.as_bytes()));
        assert_eq!(
            config_part(m.as_bytes(), "ec2fleetd").unwrap().trim(),
            CONFIG
        );
    }

    #[test]
    fn a_part_named_for_the_daemon_counts_and_picks_among_several() {
        let named = message(&[("text/plain", Some("game.jsonc"), CONFIG, false)]);
        assert_eq!(
            config_part(named.as_bytes(), "game").unwrap().trim(),
            CONFIG
        );
        let two = message(&[
            (PART_TYPE, Some("chat.jsonc"), "{}", false),
            (PART_TYPE, Some("game.jsonc"), CONFIG, false),
        ]);
        assert_eq!(config_part(two.as_bytes(), "game").unwrap().trim(), CONFIG);
        let e = config_part(two.as_bytes(), "ec2fleetd").unwrap_err();
        assert!(
            e.contains("several") && e.contains("chat.jsonc") && e.contains("game.jsonc"),
            "{e}"
        );
    }

    #[test]
    fn no_config_part_lists_the_parts() {
        let m = message(&[
            (
                "text/cloud-config",
                Some("cloud-config.yaml"),
                "#cloud-config",
                false,
            ),
            ("text/x-shellscript", None, "#!/bin/sh\necho hi", false),
        ]);
        let e = config_part(m.as_bytes(), "ec2fleetd").unwrap_err();
        assert!(
            e.contains("text/cloud-config (cloud-config.yaml), text/x-shellscript"),
            "{e}"
        );
    }
}
