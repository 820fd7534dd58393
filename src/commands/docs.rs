//! `lbctl completions SHELL` and `lbctl manpage`: generated from the clap
//! definitions in `cli.rs`, so they always match the binary.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::cli::{Cli, Shell};

pub fn completions(shell: Shell) -> Result<()> {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell, &mut Cli::command(), "lbctl", &mut out);
    out.flush().context("writing the completion script")
}

/// lbctl(8) to standard output, or, with `dir`, lbctl.8 and a page for
/// every command (`lbctl-vip-add.8`, as git names its pages) into `dir`.
pub fn manpage(dir: Option<&Path>) -> Result<()> {
    let mut cmd = Cli::command();
    cmd.build();
    let Some(dir) = dir else {
        let mut out = std::io::stdout().lock();
        render(&cmd, &mut out)?;
        return out.flush().context("writing the man page");
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_pages(&cmd, "lbctl", dir)
}

fn render(cmd: &clap::Command, out: &mut dyn Write) -> Result<()> {
    clap_mangen::Man::new(cmd.clone())
        .section("8")
        .render(out)
        .context("rendering a man page")
}

fn write_pages(cmd: &clap::Command, name: &str, dir: &Path) -> Result<()> {
    let path = dir.join(format!("{name}.8"));
    let mut page = Vec::new();
    render(&cmd.clone().name(name.to_string()), &mut page)?;
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(())
}
