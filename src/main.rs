use std::process::ExitCode;

use anyhow::{Error, Result};
use clap::Parser;
use lbctl::cli::{AttachArgs, BackendCommand, Cli, Command, RunArgs, VipCommand};
use lbctl::model::{
    check_same_family, AttachOptions, FlowFilter, FlowQuery, ListOptions, Timeouts, VipSpec,
};
use lbctl::service::run::RunOptions;
use lbctl::{commands, config_file};

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`lbctl list | head`), like other tools.
    // SAFETY: setting a signal disposition before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lbctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Turns a parsed command into its request (validated by `model`) and runs
/// the command module that serves it.
fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Attach(args) => commands::attach::run(&attach_options(args)),
        Command::Detach { iface } => commands::attach::detach(&iface),
        Command::Drain => commands::drain::drain(),
        Command::Undrain => commands::drain::undrain(),
        Command::Vip(VipCommand::Add {
            service,
            mode,
            snat,
            table_size,
        }) => {
            let spec =
                VipSpec::new(service.service(), mode, snat, table_size).map_err(Error::msg)?;
            commands::vip::add(&spec)
        }
        Command::Vip(VipCommand::Del { service }) => commands::vip::del(&service.service()),
        Command::Vip(VipCommand::Show { service }) => commands::vip::show(&service.service()),
        Command::Backend(cmd) => {
            let (BackendCommand::Add { target, .. }
            | BackendCommand::Set { target, .. }
            | BackendCommand::Del { target }) = &cmd;
            let service = target.service.service();
            let backend = target.backend;
            check_same_family(service.addr, backend).map_err(Error::msg)?;
            match cmd {
                BackendCommand::Add { weight, .. } => {
                    commands::backend::add(&service, backend, weight)
                }
                BackendCommand::Set { weight, .. } => {
                    commands::backend::set(&service, backend, weight)
                }
                BackendCommand::Del { .. } => commands::backend::del(&service, backend),
            }
        }
        Command::List {
            stats,
            rate,
            interval,
            json,
        } => {
            commands::list::run(&ListOptions::new(stats, rate, interval, json).map_err(Error::msg)?)
        }
        Command::Status => commands::status::run(),
        Command::Completions { shell } => commands::docs::completions(shell),
        Command::Manpage { dir } => commands::docs::manpage(dir.as_deref()),
        Command::Explain {
            client,
            vip,
            proto,
            json,
        } => commands::explain::run(
            &FlowQuery::new(client, vip, proto).map_err(Error::msg)?,
            json,
        ),
        Command::Conns {
            vip,
            backend,
            proto,
            json,
        } => commands::conns::run(
            &FlowFilter {
                vip,
                backend,
                proto,
            },
            json,
        ),
        Command::Apply { file } => commands::apply::run(&file, &config_file::read(&file)?),
        Command::Save => commands::save::run(),
        Command::Run(args) => commands::run::run(&run_options(args)?),
        Command::Timeouts {
            tcp,
            tcpfin,
            udp,
            syn,
            udp_unreplied,
        } => commands::timeouts::run(
            &Timeouts::new(tcp, tcpfin, udp, syn)
                .and_then(|t| t.with_udp_unreplied(udp_unreplied))
                .map_err(Error::msg)?,
        ),
    }
}

fn attach_options(args: AttachArgs) -> AttachOptions {
    AttachOptions {
        iface: args.iface,
        mode: args.mode,
        foreground: args.foreground,
        replace: args.replace,
        hash_seed: args.hash_seed,
        flow_cache_size: args.flow_cache_size,
    }
}

fn run_options(args: RunArgs) -> Result<RunOptions> {
    Ok(RunOptions {
        desired: config_file::read(&args.file)?,
        file: args.file,
        metrics: args.metrics,
        detach_on_exit: args.detach_on_exit,
        withdraw_on_exit: args.withdraw_on_exit,
    })
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
