//! The manual: `keyprov man --dir` writes a page per subcommand listed by `keyprov --help`, plus
//! keyprov(1), keyprov.yaml(5) and keyprov-manifest(5); every page renders with man-db's
//! `man -l` without a groff warning and says what it documents; pages print one by one.

mod common;

use std::path::Path;
use std::process::Command;

fn keyprov(args: &[&str]) -> common::Run {
    Command::new(env!("CARGO_BIN_EXE_keyprov"))
        .args(args)
        .env_remove("KEYPROV_CONFIG")
        .output()
        .unwrap()
        .into()
}

/// The subcommands `keyprov --help` lists (its "Commands:" block), `help` excepted.
fn subcommands() -> Vec<String> {
    let help = keyprov(&["--help"]);
    assert_eq!(help.code, 0);
    help.stdout
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // Wrapped descriptions are indented further.
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(String::from)
        .collect()
}

/// `man -l FILE` as plain text, asserting it succeeds without a groff warning.
fn render(page: &Path) -> String {
    let out = Command::new("man")
        .args(["--warnings", "-E", "UTF-8", "-l"])
        .arg(page)
        .env("MANWIDTH", "100")
        .env("MAN_KEEP_FORMATTING", "0")
        .env_remove("MANPAGER")
        .env("PAGER", "cat")
        .output()
        .expect("man runs (man-db: scripts/test installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "man -l {}: {stderr}", page.display());
    assert!(
        stderr.trim().is_empty(),
        "man -l {} warns: {stderr}",
        page.display()
    );
    // Bold and underline come as overstrikes (`N\x08N`): keep the last character of each.
    let mut text = String::new();
    for c in String::from_utf8_lossy(&out.stdout).chars() {
        if c == '\u{8}' {
            text.pop();
        } else {
            text.push(c);
        }
    }
    text
}

#[test]
fn every_subcommand_has_a_page_and_every_page_renders() {
    let dir = tempfile::tempdir().unwrap();
    let run = keyprov(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.all());
    let commands = subcommands();
    assert!(commands.len() >= 10, "{commands:?}");
    let mut expected: Vec<String> = commands.iter().map(|c| format!("keyprov-{c}.1")).collect();
    expected.extend(["keyprov.1", "keyprov.yaml.5", "keyprov-manifest.5"].map(String::from));
    let mut written: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    written.sort();
    expected.sort();
    assert_eq!(written, expected);
    assert_eq!(run.stdout.lines().count(), expected.len(), "{}", run.stdout);
    for file in &written {
        let text = render(&dir.path().join(file));
        let name = file.rsplit_once('.').unwrap().0;
        assert!(text.contains("NAME"), "{file}: {text}");
        assert!(text.contains(name), "{file}: {text}");
        if file.ends_with(".1") {
            for section in [
                "SYNOPSIS",
                "EXIT STATUS",
                "ENVIRONMENT",
                "FILES",
                "SEE ALSO",
            ] {
                assert!(text.contains(section), "{file} lacks {section}: {text}");
            }
            assert!(text.contains("2 beats 1 beats 3 beats 0"), "{file}: {text}");
        }
    }
    // keyprov(1) points at pages that exist.
    let top = render(&dir.path().join("keyprov.1"));
    for command in &commands {
        assert!(top.contains(&format!("keyprov-{command}(1)")), "{top}");
    }
}

#[test]
fn pages_print_one_by_one_and_an_unknown_page_is_a_usage_error() {
    let top = keyprov(&["man"]);
    assert_eq!(top.code, 0);
    assert!(
        top.stdout.lines().any(|l| l.starts_with(".TH KEYPROV 1")),
        "{}",
        top.stdout
    );
    for (page, head) in [
        ("run", ".TH KEYPROV-RUN 1"),
        ("keyprov-plan", ".TH KEYPROV-PLAN 1"),
        ("keyprov.yaml", ".TH KEYPROV.YAML 5"),
        ("keyprov-manifest.5", ".TH KEYPROV-MANIFEST 5"),
    ] {
        let run = keyprov(&["man", page]);
        assert_eq!(run.code, 0, "{page}: {}", run.all());
        assert!(
            run.stdout.lines().any(|l| l.starts_with(head)),
            "{page}: {}",
            run.stdout
        );
    }
    let unknown = keyprov(&["man", "nope"]);
    assert_eq!(unknown.code, 64);
    assert!(
        unknown.stderr.contains("keyprov-run.1"),
        "{}",
        unknown.stderr
    );
}
