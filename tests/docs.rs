//! Docs that cannot drift: what README.md and docs/JSON.md say about
//! modes, values, verdicts, explain's checks and the configuration file is
//! checked against the code that defines them. Pure: no root, no kernel.

use std::collections::BTreeSet;

use clap::CommandFactory;
use lbctl::commands::explain::CheckName;
use lbctl::datapath::abi::REASON_NAMES;
use lbctl::model::{Health, NatMode, Proto};

fn read(path: &str) -> String {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// The lines of `doc` from the heading `heading` to the next heading of
/// the same or a higher level.
fn section<'a>(doc: &'a str, heading: &str) -> Vec<&'a str> {
    let level = heading.chars().take_while(|c| *c == '#').count();
    let mut lines = doc.lines().skip_while(|l| *l != heading);
    assert!(lines.next().is_some(), "no heading {heading:?}");
    let mut in_code = false;
    lines
        .take_while(|l| {
            if l.trim_start().starts_with("```") {
                in_code = !in_code;
            }
            let h = l.chars().take_while(|c| *c == '#').count();
            in_code || !(h > 0 && h <= level && l[h..].starts_with(' '))
        })
        .collect()
}

/// The text of every fenced block of `lang` in `lines`.
fn blocks(lines: &[&str], lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for l in lines {
        match (&mut current, l.trim_start().strip_prefix("```")) {
            (None, Some(tag)) if tag == lang => current = Some(String::new()),
            (Some(text), Some(_)) => {
                out.push(std::mem::take(text));
                current = None;
            }
            (Some(text), None) => {
                text.push_str(l);
                text.push('\n');
            }
            _ => {}
        }
    }
    out
}

/// A markdown table's cells, row by row (header and rule skipped).
fn table_rows(lines: &[&str]) -> Vec<Vec<String>> {
    lines
        .iter()
        .filter(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

/// What is between backticks (and, inside, quotes) in a cell.
fn quoted(cell: &str) -> BTreeSet<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(|s| s.trim_matches('"').to_string())
        .collect()
}

fn set<T: ToString>(items: impl IntoIterator<Item = T>) -> BTreeSet<String> {
    items.into_iter().map(|i| i.to_string()).collect()
}

fn serde_names<T: serde::Serialize>(items: impl IntoIterator<Item = T>) -> BTreeSet<String> {
    items
        .into_iter()
        .map(|i| {
            let json = serde_json::to_string(&i).unwrap();
            json.trim_matches('"').to_string()
        })
        .collect()
}

#[test]
fn readme_toml_example_is_a_file_lbctl_reads() {
    let readme = read("README.md");
    let lines = section(&readme, "### The configuration file");
    let tomls = blocks(&lines, "toml");
    assert_eq!(tomls.len(), 1, "one TOML example under the heading");
    let example = &tomls[0];
    let desired = lbctl::config_file::parse(example)
        .unwrap_or_else(|e| panic!("README's TOML example: {e}\n{example}"));
    assert!(!desired.vips.is_empty(), "the example has a VIP");
    // Its comments name every mode and every timeout the file takes.
    lbctl_lab::configs::assert_names_every_mode_and_timeout(
        "README's TOML example",
        example,
        |t| example.contains(t),
    );
}

#[test]
fn json_md_values_are_the_serde_types() {
    let json_md = read("docs/JSON.md");
    // The values table, before the first command's section.
    let intro: Vec<&str> = json_md
        .lines()
        .take_while(|l| !l.starts_with("## "))
        .collect();
    let rows = table_rows(&intro);
    let row = |field: &str| -> BTreeSet<String> {
        let row = rows
            .iter()
            .find(|r| r[0] == format!("`{field}`"))
            .unwrap_or_else(|| panic!("docs/JSON.md has no values row for `{field}`"));
        quoted(&row[1])
    };
    assert_eq!(row("proto"), serde_names(Proto::ALL), "proto");
    assert_eq!(row("mode"), serde_names(NatMode::ALL), "mode");
    assert_eq!(row("health"), serde_names(Health::ALL), "health");
    // What serde writes is what the code prints elsewhere.
    assert_eq!(serde_names(NatMode::ALL), set(NatMode::ALL));
    assert_eq!(serde_names(Proto::ALL), set(Proto::ALL));
    assert_eq!(serde_names(Health::ALL), set(Health::ALL));

    let checks = section(
        &json_md,
        "## `lbctl explain CLIENT:PORT VIP:PORT --json [--proto P]`",
    );
    let from_ = checks
        .iter()
        .position(|l| l.starts_with("The `check` names"))
        .expect("docs/JSON.md lists the check names");
    let names: BTreeSet<String> = table_rows(&checks[from_..])
        .iter()
        .map(|r| r[0].trim_matches('`').to_string())
        .collect();
    assert_eq!(names, serde_names(CheckName::ALL), "explain's check names");
}

#[test]
fn readme_lists_every_mode_and_verdict() {
    let readme = read("README.md");
    let modes: BTreeSet<String> = table_rows(&section(&readme, "## Choosing a mode"))
        .iter()
        .map(|r| r[0].split('`').nth(1).unwrap_or("").to_string())
        .collect();
    assert_eq!(modes, set(NatMode::ALL), "README's table of modes");

    let verdicts: BTreeSet<String> = table_rows(&section(&readme, "### Verdicts"))
        .iter()
        .map(|r| r[0].trim_matches('`').to_string())
        .collect();
    assert_eq!(
        verdicts,
        set(REASON_NAMES),
        "README's table of verdicts against enum lb_reason"
    );
}

#[test]
fn vip_add_help_describes_every_mode() {
    let cli = lbctl::cli::Cli::command();
    let add = cli
        .find_subcommand("vip")
        .and_then(|v| v.find_subcommand("add"))
        .expect("lbctl vip add");
    let mode = add
        .get_arguments()
        .find(|a| a.get_id() == "mode")
        .expect("--mode");
    let help = mode.get_help().expect("--mode has help").to_string();
    for m in NatMode::ALL {
        assert!(help.contains(m.name()), "--mode's help lacks {m}: {help}");
    }
}

/// Every file of `dir` (recursively), relative to the package root.
fn files_under(dir: &str, out: &mut Vec<String>) {
    let full = format!("{}/{dir}", env!("CARGO_MANIFEST_DIR"));
    for e in std::fs::read_dir(&full).unwrap_or_else(|e| panic!("{full}: {e}")) {
        let e = e.unwrap();
        let path = format!("{dir}/{}", e.file_name().to_string_lossy());
        if e.file_type().unwrap().is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// DESIGN.md's map of the tree names every source file of `src/` and
/// `bpf/`: a row's first cell names it by its path, or names a path in its
/// folder and the row names the file (`name.rs`), or names a folder above
/// it and the row names the subfolder it is in (`health/`); a `mod.rs` is
/// named with its folder.
#[test]
fn design_map_names_every_source_file() {
    let design = read("docs/DESIGN.md");
    let rows = table_rows(&section(&design, "## Map of the tree"));
    let mut files = Vec::new();
    files_under("src", &mut files);
    files_under("bpf", &mut files);
    let named = |file: &str| {
        let parts: Vec<&str> = file.split('/').collect();
        let last = parts.len() - 1;
        rows.iter().any(|r| {
            let row = r.join(" | ");
            let folder_row = |f: &str| r[0].contains(&format!("`{f}/"));
            r[0].contains(&format!("`{file}`"))
                || (parts[last] == "mod.rs" && folder_row(&parts[..last].join("/")))
                || (1..=last).any(|depth| {
                    let below = if depth == last {
                        format!("`{}`", parts[depth])
                    } else {
                        format!("`{}/`", parts[depth])
                    };
                    folder_row(&parts[..depth].join("/")) && row.contains(&below)
                })
        })
    };
    let missing: Vec<_> = files
        .iter()
        .filter(|f| !f.ends_with("vmlinux.h") && !named(f))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/DESIGN.md's map of the tree does not name {missing:?}"
    );
}
