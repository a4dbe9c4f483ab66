//! `keyprov man`: the manual. keyprov(1) and a page per subcommand (keyprov-run(1), ...)
//! rendered from the command line definition with clap_mangen, plus keyprov.yaml(5) and
//! keyprov-manifest(5) (man/*.5), with the exit status, files and environment every page shares.

use std::io::Write as _;
use std::path::Path;

use crate::exit::Exit;

/// One page of the manual.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// `keyprov-run`, `keyprov.yaml`.
    pub name: String,
    /// `1` or `5`.
    pub section: &'static str,
    /// The roff source.
    pub roff: Vec<u8>,
}

impl Page {
    /// The file name: `keyprov-run.1`.
    pub fn file_name(&self) -> String {
        format!("{}.{}", self.name, self.section)
    }
}

const CONFIG_PAGE: &str = include_str!("../../man/keyprov.yaml.5");
const MANIFEST_PAGE: &str = include_str!("../../man/keyprov-manifest.5");

/// Exit status, shared by every command page: an error always outranks "changes pending".
const EXIT_STATUS: &str = r#".SH "EXIT STATUS"
When several apply, an error always outranks "changes pending":
2 beats 1 beats 3 beats 0.
.TP
.B 0
converged, nothing to do
.TP
.B 1
at least one key failed (the others were still reconciled); for
.BR status ,
a key is failed or failing
.TP
.B 2
invalid configuration (nothing changed) or at least one invalid manifest (its keys are left as
they are; keys of valid files still reconcile)
.TP
.B 3
.B plan
only: changes pending
.TP
.B 64
usage error (unknown flag or subcommand, missing or bad argument)
.TP
.B 75
the stateDir lock is held by another process (another keyprov, or e.g. flock(1)) and
.B \-\-no\-wait
was given
"#;

const ENVIRONMENT: &str = r#".SH ENVIRONMENT
.TP
.B KEYPROV_CONFIG
The configuration file when
.B \-\-config
is not given.
.TP
.B KEYPROV_LOG
Log filter (tracing EnvFilter syntax, such as
.BR debug ),
overriding
.BR log.level .
.TP
.B AWS_REGION\fR, \fBAWS_PROFILE\fR, \fBAWS_ENDPOINT_URL\fR, \fBAWS_ENDPOINT_URL_KMS\fR, \fBAWS_ENDPOINT_URL_SECRETS_MANAGER
The standard AWS configuration, with
.BR "provider: aws"
or Secrets Manager outputs; credentials come from the standard chain.
.PP
Hooks see
.BR KEYPROV_NAME ,
.BR KEYPROV_GENERATION ,
.B KEYPROV_EVENT
.RB ( publish | activate )
and
.BR KEYPROV_OUTPUT_DIRS .
"#;

const FILES: &str = r#".SH FILES
.TP
.I /etc/keyprov/keyprov.yaml
The configuration (see
.BR keyprov.yaml (5)).
.TP
.I /etc/keyprov/manifests.d/
The manifests of the packaged configuration (see
.BR keyprov-manifest (5)).
.TP
.I /var/lib/keyprov/
The packaged stateDir:
.I keys/<name>/
(versions and links),
.I retry/
(pending hooks),
.I .lock
and the local provider's keyring.
"#;

/// SEE ALSO of a command page: the other pages.
fn see_also(own: &str, commands: &[String]) -> String {
    let mut refs: Vec<String> = std::iter::once("keyprov".to_string())
        .chain(commands.iter().map(|c| format!("keyprov-{c}")))
        .filter(|name| name != own)
        .map(|name| format!(".BR \\%{name} (1),"))
        .collect();
    refs.push(".BR keyprov.yaml (5),".into());
    refs.push(".BR keyprov-manifest (5)".into());
    // .nh: page names are not hyphenated.
    format!(".SH \"SEE ALSO\"\n.nh\n{}\n", refs.join("\n"))
}

/// Renders a command page: clap_mangen's sections, then the shared ones.
fn command_page(
    command: clap::Command,
    name: String,
    source: &str,
    commands: &[String],
) -> std::io::Result<Page> {
    let man = clap_mangen::Man::new(command)
        .title(name.to_uppercase())
        .source(source)
        .manual("keyprov manual");
    let mut roff = Vec::new();
    man.render(&mut roff)?;
    if !roff.ends_with(b"\n") {
        roff.push(b'\n');
    }
    for section in [EXIT_STATUS, ENVIRONMENT, FILES] {
        roff.write_all(section.as_bytes())?;
    }
    roff.write_all(see_also(&name, commands).as_bytes())?;
    Ok(Page {
        name,
        section: "1",
        roff,
    })
}

/// Every page of the manual: keyprov(1), keyprov-SUBCOMMAND(1) for each subcommand, then
/// keyprov.yaml(5) and keyprov-manifest(5).
pub fn pages(cli: clap::Command) -> std::io::Result<Vec<Page>> {
    let mut cli = cli.disable_help_subcommand(true);
    cli.build();
    let commands: Vec<String> = cli
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| c.get_name().to_string())
        .collect();
    let source = format!("keyprov {}", cli.get_version().unwrap_or_default());
    let mut pages = vec![command_page(
        cli.clone(),
        "keyprov".into(),
        &source,
        &commands,
    )?];
    for sub in cli.get_subcommands().filter(|c| !c.is_hide_set()) {
        let name = format!("keyprov-{}", sub.get_name());
        pages.push(command_page(sub.clone(), name, &source, &commands)?);
    }
    for (name, text) in [
        ("keyprov.yaml", CONFIG_PAGE),
        ("keyprov-manifest", MANIFEST_PAGE),
    ] {
        pages.push(Page {
            name: name.into(),
            section: "5",
            roff: text.as_bytes().to_vec(),
        });
    }
    Ok(pages)
}

/// `keyprov man [PAGE] [--dir DIR]`: prints keyprov(1), or PAGE (`run`, `keyprov-run`,
/// `keyprov.yaml`, `keyprov-manifest`, with or without the section suffix), or writes every
/// page into DIR (created when missing) and lists the files written.
pub fn man(cli: clap::Command, page: Option<&str>, dir: Option<&Path>) -> Exit {
    let pages = match pages(cli) {
        Ok(pages) => pages,
        Err(err) => {
            crate::errln!("error: cannot render the manual: {err}");
            return Exit::KeyFailed;
        }
    };
    if let Some(dir) = dir {
        return write_all(&pages, dir);
    }
    let wanted = page.unwrap_or("keyprov");
    let found = pages.iter().find(|p| {
        [
            p.name.clone(),
            p.file_name(),
            p.name.trim_start_matches("keyprov-").to_string(),
        ]
        .contains(&wanted.to_string())
    });
    match found {
        Some(page) => {
            crate::output::out(&page.roff);
            Exit::Ok
        }
        None => {
            let names: Vec<String> = pages.iter().map(Page::file_name).collect();
            crate::errln!(
                "error: no manual page {wanted:?}; the pages are {}",
                names.join(", ")
            );
            Exit::Usage
        }
    }
}

fn write_all(pages: &[Page], dir: &Path) -> Exit {
    if let Err(err) = std::fs::create_dir_all(dir) {
        crate::errln!("error: cannot create {}: {err}", dir.display());
        return Exit::KeyFailed;
    }
    for page in pages {
        let path = dir.join(page.file_name());
        if let Err(err) = std::fs::write(&path, &page.roff) {
            crate::errln!("error: cannot write {}: {err}", path.display());
            return Exit::KeyFailed;
        }
        crate::output::out(format!("{}\n", path.display()).as_bytes());
    }
    Exit::Ok
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every property name below `schema` (objects, arrays, `$ref` definitions).
    fn property_names(schema: &serde_json::Value, names: &mut Vec<String>) {
        match schema {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::Object(props)) = map.get("properties") {
                    names.extend(props.keys().cloned());
                }
                for value in map.values() {
                    property_names(value, names);
                }
            }
            serde_json::Value::Array(items) => {
                items.iter().for_each(|v| property_names(v, names));
            }
            _ => {}
        }
    }

    #[test]
    fn the_manifest_page_names_every_field_of_the_schema() {
        let schema =
            serde_json::to_value(schemars::schema_for!(crate::manifest::document::Document))
                .unwrap();
        let mut names = Vec::new();
        property_names(&schema, &mut names);
        assert!(names.len() > 20, "{names:?}");
        for name in names {
            assert!(
                MANIFEST_PAGE.contains(&name),
                "keyprov-manifest(5) does not mention {name:?}"
            );
        }
    }

    #[test]
    fn the_configuration_page_names_every_field_of_the_configuration() {
        let mut names = Vec::new();
        property_names(&crate::config::schema(), &mut names);
        assert!(names.len() > 20, "{names:?}");
        for name in names {
            assert!(
                CONFIG_PAGE.contains(&name),
                "keyprov.yaml(5) does not mention {name:?}"
            );
        }
    }
}
