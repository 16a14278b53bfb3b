//! What the fuzz targets check, shared by those that read configs.

use ec2fleetd::config::Config;

/// Validates `text` as a config; a rejection must name at least one
/// problem, each at a 1-based `line:column` inside the text's lines.
pub fn check_config(source: &str, text: &str) {
    let Err(errors) = Config::from_text(source, text) else {
        return;
    };
    assert!(!errors.problems.is_empty(), "a rejection without a problem");
    let lines = text.matches('\n').count() + 1;
    for p in &errors.problems {
        assert!(
            p.line >= 1 && p.column >= 1,
            "a problem without a position: {p:?}"
        );
        assert!(
            p.line <= lines,
            "a problem past the last line ({lines}): {p:?}"
        );
    }
}
