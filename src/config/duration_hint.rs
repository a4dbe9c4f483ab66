//! What to write for a configuration duration given without its unit (`claimTimeout: 5`):
//! the line to write (`claimTimeout: 5s`), where the generic hint said to quote the number,
//! which is still invalid.

use crate::manifest::Diagnostic;

/// Every duration of the configuration file, with the unit a bare number most likely means
/// there (milliseconds for the debounce, seconds elsewhere).
pub(super) const DURATIONS: &[(&str, Unit)] = &[
    ("aws.connectTimeout", Unit::Seconds),
    ("aws.attemptTimeout", Unit::Seconds),
    ("aws.operationTimeout", Unit::Seconds),
    ("reconcile.pruneAfter", Unit::Seconds),
    ("reconcile.clockTolerance", Unit::Seconds),
    ("reconcile.resyncEvery", Unit::Seconds),
    ("reconcile.fullSweepEvery", Unit::Seconds),
    ("reconcile.debounce", Unit::Milliseconds),
    ("reconcile.retryBackoff", Unit::Seconds),
    ("reconcile.retryBackoffMax", Unit::Seconds),
    ("fleet.generateWindow", Unit::Seconds),
    ("fleet.claimTimeout", Unit::Seconds),
];

/// The unit a bare number is read in, for the hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unit {
    /// `ms`.
    Milliseconds,
    /// `s`.
    Seconds,
}

impl Unit {
    fn suffix(self) -> &'static str {
        match self {
            Unit::Milliseconds => "ms",
            Unit::Seconds => "s",
        }
    }

    fn words(self) -> &'static str {
        match self {
            Unit::Milliseconds => "milliseconds",
            Unit::Seconds => "seconds",
        }
    }
}

/// Rewrites the message of every problem of a duration field whose value in `text` is a
/// bare number (`5`, or `"5"` quoted): it says what to write instead. Other problems are
/// returned as they are.
pub(super) fn amend(text: &str, mut problems: Vec<Diagnostic>) -> Vec<Diagnostic> {
    if !problems
        .iter()
        .any(|p| DURATIONS.iter().any(|(field, _)| *field == p.field))
    {
        return problems;
    }
    let Ok(document) = serde_yaml::from_str::<serde_yaml::Value>(text) else {
        return problems;
    };
    for problem in &mut problems {
        let Some((field, unit)) = DURATIONS.iter().find(|(field, _)| *field == problem.field)
        else {
            continue;
        };
        let value = field
            .split('.')
            .try_fold(&document, |value, part| value.get(part));
        if let Some(message) = value.and_then(|value| hint(field, *unit, value)) {
            problem.message = message;
        }
    }
    problems
}

/// The message for `value` of duration `field`, when it is a bare number.
fn hint(field: &str, unit: Unit, value: &serde_yaml::Value) -> Option<String> {
    let (number, what) = match value {
        serde_yaml::Value::Number(n) => (n.to_string(), format!("the number {n}")),
        serde_yaml::Value::String(s) if s.trim().parse::<f64>().is_ok() => {
            (s.trim().to_string(), format!("{s:?} (a number)"))
        }
        _ => return None,
    };
    let name = field.rsplit('.').next().unwrap_or(field);
    let write = if number.bytes().all(|b| b.is_ascii_digit()) {
        format!(
            "write `{name}: {number}{}` for {number} {}",
            unit.suffix(),
            unit.words()
        )
    } else {
        // humantime takes whole numbers only: 1.5 s is 1500ms or 1s 500ms.
        format!("write it in whole units, like `{name}: 1500ms` or `{name}: 2m`")
    };
    Some(format!(
        "must be a duration with its unit, not {what}; {write} (units: ms, s, m, h, d)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn problems(text: &str) -> Vec<Diagnostic> {
        Config::from_bytes(Path::new("/etc/keyprov/keyprov.yaml"), text.as_bytes()).expect_err(text)
    }

    fn yaml(field: &str, value: &str) -> String {
        let (section, name) = field.split_once('.').unwrap();
        format!("manifests: [m]\nstateDir: s\n{section}: {{{name}: {value}}}\n")
    }

    #[test]
    fn every_duration_given_as_a_bare_number_says_what_to_write() {
        for (field, unit) in DURATIONS {
            let name = field.rsplit('.').next().unwrap();
            let want = match unit {
                Unit::Seconds => format!("write `{name}: 5s` for 5 seconds"),
                Unit::Milliseconds => format!("write `{name}: 5ms` for 5 milliseconds"),
            };
            for value in ["5", "\"5\""] {
                let found = problems(&yaml(field, value));
                assert_eq!(found.len(), 1, "{field}: {value}: {found:?}");
                assert_eq!(found[0].field, *field);
                assert!(
                    found[0]
                        .message
                        .starts_with("must be a duration with its unit, not ")
                        && found[0].message.contains(&want)
                        && !found[0].message.contains("quote it"),
                    "{field}: {value}: {}",
                    found[0].message
                );
            }
            // What the hint says to write is a valid duration there.
            let written = format!("5{}", unit.suffix());
            if let Err(found) = Config::from_bytes(
                Path::new("/etc/keyprov/keyprov.yaml"),
                yaml(field, &written).as_bytes(),
            ) {
                // 5s is below retryBackoff's default 30s: valid as a duration, not as a maximum.
                assert!(
                    found
                        .iter()
                        .all(|p| p.message == "must not be shorter than reconcile.retryBackoff"),
                    "{field}: {written}: {found:?}"
                );
            }
        }
    }

    /// Every property name anywhere in `schema`.
    fn properties(schema: &serde_json::Value, names: &mut Vec<String>) {
        match schema {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::Object(props)) = map.get("properties") {
                    names.extend(props.keys().cloned());
                }
                map.values().for_each(|v| properties(v, names));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| properties(v, names)),
            _ => {}
        }
    }

    #[test]
    fn every_duration_of_the_configuration_is_listed() {
        let mut names = Vec::new();
        properties(&crate::config::schema(), &mut names);
        let durations = names.iter().filter(|n| {
            [
                "Timeout",
                "Every",
                "After",
                "Backoff",
                "BackoffMax",
                "Window",
                "Tolerance",
            ]
            .iter()
            .any(|end| n.ends_with(end))
                || *n == "debounce"
        });
        for name in durations {
            assert!(
                DURATIONS
                    .iter()
                    .any(|(f, _)| f.ends_with(&format!(".{name}"))),
                "{name} is not in DURATIONS"
            );
        }
    }

    #[test]
    fn other_problems_keep_their_message() {
        let found = problems(&yaml("fleet.claimTimeout", "\"5 fortnights\""));
        assert!(
            found[0]
                .message
                .contains("must be a duration from 1s to 1day")
        );
        let found = problems(&yaml("reconcile.debounce", "1.5"));
        assert!(
            found[0]
                .message
                .contains("not the number 1.5; write it in whole units"),
            "{}",
            found[0].message
        );
    }
}
