//! `ec2fleetd check`, the examples and the JSON Schema.

use std::process::Command;

use super::common::*;

fn check(files: &[&std::path::Path]) -> (i32, String, String) {
    let out = Command::new(daemon_bin())
        .arg("check")
        .args(files)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn examples() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(repo_file("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonc"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "examples/ has the seed configs");
    files
}

#[test]
fn every_example_passes_check() {
    for file in examples() {
        let (code, out, err) = check(&[&file]);
        assert_eq!(code, 0, "{}: {out}{err}", file.display());
    }
}

fn schema() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(repo_file("schema/config.schema.json")).unwrap())
        .unwrap()
}

/// The examples are JSONC; the schema validates the JSON they stand for.
fn jsonc_to_json(text: &str) -> serde_json::Value {
    jsonc_parser::parse_to_serde_value::<serde_json::Value>(text, &Default::default()).unwrap()
}

#[test]
fn every_example_passes_the_schema() {
    let validator = jsonschema::validator_for(&schema()).unwrap();
    for file in examples() {
        let instance = jsonc_to_json(&std::fs::read_to_string(&file).unwrap());
        let errors: Vec<String> = validator
            .iter_errors(&instance)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", file.display());
    }
}

#[test]
fn schema_rejects_what_check_rejects() {
    let validator = jsonschema::validator_for(&schema()).unwrap();
    let bad = [
        r#"{ "domains": { "d": { "exec": [{ "lines": [{ "argv": ["relative/path"] }] }] } } }"#,
        r#"{ "domains": { "d": { "notfy": [] } } }"#,
        r#"{ "domains": { "d": { "update-route53": [{ "hostedzone": "Z1", "name": "a", "ttl": "60" }] } } }"#,
        r#"{ "domains": { "d": { "attach-volume": [{ "device": "/dev/xvdf", "source": "q" }] } } }"#,
        r#"{ "hostname": "a", "set-hostname": "b", "domains": {} }"#,
        r#"{ "domains": { "d": { "notify": [{ "backend": "aws-sns", "options": { "queue-url": "x" } }] } } }"#,
        r#"{ "domains": { "d": { "notify": [{ "backend": "webhook", "options": { "url": "ftp://x" } }] } } }"#,
        r#"{ "domains": { "d": { "notify": [{ "backend": "webhook", "options": { "topic": "x" } }] } } }"#,
        r#"{ "domains": { "d": { "update-route53": [{ "hostedzone": "Z1", "name": "a", "address": "elastic" }] } } }"#,
        // Only events that end the daemon can release anything.
        r#"{ "domains": { "d": { "update-route53": [{ "hostedzone": "Z1", "name": "a", "delete-on": ["rebalance"] }] } } }"#,
        r#"{ "domains": { "d": { "attach-volume": [{ "device": "/dev/xvdf", "source": "x", "volume-id": "vol-1", "detach-on": ["started"] }] } } }"#,
        // `f` and `p` on one pool; `f` without a pool; `max-loss` without `f`.
        r#"{ "domains": { "d": { "attach-volume": [{ "device": "/dev/xvdf", "source": "pf", "pool-name": "w" }] } } }"#,
        r#"{ "domains": { "d": { "attach-volume": [{ "device": "/dev/xvdf", "source": "f" }] } } }"#,
        r#"{ "domains": { "d": { "attach-volume": [{ "device": "/dev/xvdf", "source": "p", "pool-name": "w", "max-loss": 60 }] } } }"#,
        // A snapshot that is never taken, or taken at `failed`.
        r#"{ "domains": { "d": { "attach-volume": [{ "device": "/dev/xvdf", "source": "f", "pool-name": "w", "snapshot": {} }] } } }"#,
        r#"{ "domains": { "d": { "attach-volume": [{ "device": "/dev/xvdf", "source": "f", "pool-name": "w", "snapshot": { "on": ["failed"] } }] } } }"#,
        r#"{ "domains": { "d": { "attach-volume": [{ "device": "/dev/xvdf", "source": "f", "pool-name": "w", "snapshot": { "every": 0.5 } }] } } }"#,
    ];
    let dir = tempdir();
    for (i, text) in bad.iter().enumerate() {
        assert!(
            !validator.is_valid(&jsonc_to_json(text)),
            "schema accepts bad config {i}: {text}"
        );
        let path = write_config(dir.path(), &format!("bad{i}.jsonc"), text);
        let (code, _, err) = check(&[&path]);
        assert_eq!(code, 78, "check accepts bad config {i}: {text}\n{err}");
    }
}

/// Each object's keys in the schema are exactly the keys `check` accepts.
#[test]
fn schema_keys_match_the_validator() {
    let schema = schema();
    for (def, keys) in ec2fleetd::config::known_keys() {
        let props = if def.is_empty() {
            &schema["properties"]
        } else {
            &schema["$defs"][def]["properties"]
        };
        let mut in_schema: Vec<&str> = props
            .as_object()
            .unwrap_or_else(|| panic!("schema has no properties for {def:?}"))
            .keys()
            .map(String::as_str)
            .collect();
        let mut in_code = keys.to_vec();
        in_schema.sort();
        in_code.sort();
        assert_eq!(in_schema, in_code, "keys of {def:?}");
    }
}

#[test]
fn check_reports_every_error_with_path_and_position() {
    let dir = tempdir();
    let path = write_config(
        dir.path(),
        "bad.jsonc",
        r#"{
  // two mistakes in one domain, one in another
  "domains": {
    "game": {
      "exec": [{ "on": ["strated"], "lines": [{ "argv": ["/bin/echo", "{volume}"] }] }]
    },
    "dns": {
      "update-route53": [{ "hostedzone": "Z1", "name": "a.example.com", "tll": 60 }]
    }
  }
}"#,
    );
    let good = repo_file("examples/minecraft.jsonc");
    let (code, out, err) = check(&[&good, &path]);
    assert_eq!(code, 78);
    assert!(out.contains("minecraft.jsonc: ok"), "{out}");
    let p = path.display();
    for expected in [
        format!("{p}:5:25: $.domains.game.exec[0].on[0]: unknown event \"strated\"; did you mean \"started\"?"),
        format!("{p}:5:72: $.domains.game.exec[0].lines[0].argv[1]: unknown macro {{volume}}"),
        format!("{p}:8:73: $.domains.dns[\"update-route53\"][0].tll: unknown key \"tll\"; did you mean \"ttl\"?"),
    ] {
        assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
    }
    assert!(err.contains("3 errors"), "{err}");
}

#[test]
fn release_events_must_end_the_daemon() {
    let dir = tempdir();
    let path = write_config(
        dir.path(),
        "release.jsonc",
        r#"{ "domains": { "d": {
  "update-route53": [{ "hostedzone": "Z1", "name": "a", "delete-on": ["interrupted", "maintenance"] }] } } }"#,
    );
    let (code, _, err) = check(&[&path]);
    assert_eq!(code, 78);
    assert!(
        err.contains(r#"[0]["delete-on"][1]: "maintenance" does not end the daemon, so nothing would be released then; the events that do: failed, stopping, interrupted, terminating"#),
        "{err}"
    );
}

#[test]
fn check_reports_syntax_errors_and_missing_files() {
    let dir = tempdir();
    let path = write_config(
        dir.path(),
        "broken.jsonc",
        "{\n  \"domains\": {\n    \"a\": {\n  }\n",
    );
    let (code, _, err) = check(&[&path, &dir.path().join("missing.jsonc")]);
    assert_eq!(code, 78);
    assert!(
        err.contains("broken.jsonc:") && err.contains("syntax"),
        "{err}"
    );
    assert!(
        err.contains("missing.jsonc") && err.contains("cannot read"),
        "{err}"
    );
}
