//! Macro templates: `Template::parse`, then `render` with every macro set.
//! A rejection points at the brace it is about; a parsed template prints
//! back to text that parses to itself.
#![no_main]

use std::sync::OnceLock;

use ec2fleetd::config::template::MACROS;
use ec2fleetd::config::{MacroValues, Template};
use libfuzzer_sys::fuzz_target;

/// Every macro set, to a value with braces and more than ASCII in it.
fn values() -> &'static MacroValues {
    static VALUES: OnceLock<MacroValues> = OnceLock::new();
    VALUES.get_or_init(|| {
        let mut values = MacroValues::default();
        for &name in MACROS {
            values.set(name, format!("{{{name}}} «{name}»"));
        }
        values.seal()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Template::parse(text) {
        Ok(template) => {
            let _ = template.render(values());
            let _ = template.wildcard();
            let printed = template.to_string();
            assert_eq!(
                Template::parse(&printed).as_ref(),
                Ok(&template),
                "{printed:?} does not parse back"
            );
        }
        Err(e) => {
            let at = text.get(e.offset..).and_then(|rest| rest.chars().next());
            assert!(
                matches!(at, Some('{' | '}')),
                "the error's offset {} is not at a brace: {e:?}",
                e.offset
            );
        }
    }
});
