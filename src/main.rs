use std::process::ExitCode;

use clap::Parser;
use lbctl::cli::{Cli, Command};
use lbctl::commands;

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`lbctl list | head`), like other tools.
    // SAFETY: setting a signal disposition before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let result = match &cli.command {
        Command::Attach(args) => commands::attach::run(args),
        Command::Detach { iface } => commands::attach::detach(iface),
        Command::Vip(cmd) => commands::vip::run(cmd),
        Command::Backend(cmd) => commands::backend::run(cmd),
        Command::List { stats, json } => commands::list::run(*stats, *json),
        Command::Status => commands::status::run(),
        Command::Timeouts { tcp, tcpfin, udp } => commands::status::timeouts(*tcp, *tcpfin, *udp),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lbctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// clap's errors span several lines; lbctl's are one line on stderr.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let text = e.to_string();
    let message: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    let message = message.join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    eprintln!("lbctl: {message} (see lbctl --help)");
    ExitCode::from(2)
}
