use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Error, Result};
use clap::Parser;
use lbctl::cli::{
    AffinityArg, AttachArgs, BackendCommand, Cli, Command, RunArgs, ServiceArg, Shell, VipCommand,
};
use lbctl::model::{
    check_same_family, vip_name, Affinity, AttachOptions, Desired, FlowFilter, FlowQuery,
    ListOptions, OnBackendGone, Ports, Service, Timeouts, VipSpec,
};
use lbctl::prefix::Prefix;
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
    match request(cli.command).and_then(dispatch) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lbctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A command with its values checked by `model` (and its file read):
/// everything a command module needs, nothing left to validate.
enum Request {
    Attach(AttachOptions),
    Detach(String),
    Drain,
    Undrain,
    VipAdd(VipSpec),
    VipSet(
        Service,
        Option<Affinity>,
        Option<Vec<Prefix>>,
        Option<OnBackendGone>,
        Option<Option<u32>>,
    ),
    VipDel(Service),
    VipShow(Service),
    BackendAdd(Service, SocketAddr, u32),
    BackendSet(Service, SocketAddr, u32),
    BackendDel(Service, SocketAddr),
    List(ListOptions),
    Status(PathBuf),
    Completions(Shell),
    Manpage(Option<PathBuf>),
    Explain(FlowQuery, bool),
    Conns(FlowFilter, bool),
    Apply(PathBuf, Desired, bool),
    Check(PathBuf),
    Save,
    Run(RunOptions),
    Timeouts(Timeouts),
}

/// `--affinity` and `--affinity-prefix6` as one setting (`none` where
/// neither is given).
fn affinity_of(a: &AffinityArg) -> Result<Affinity> {
    let name = a.affinity.as_deref().unwrap_or("none");
    Affinity::parse(name, a.affinity_prefix6).map_err(|e| {
        Error::msg(
            e.replace("affinity prefix6", "--affinity-prefix6")
                .replace("affinity \"", "--affinity \""),
        )
    })
}

/// `--max-new-flows N` as a limit (Some(None): given as 0, no limit).
fn limit_of(n: Option<u64>) -> Result<Option<Option<u32>>> {
    n.map(lbctl::model::max_new_flows)
        .transpose()
        .map_err(|e| Error::msg(format!("--{e}")))
}

/// `--allow` prefixes as the allowlist of `service`.
fn allowlist_of(service: Service, allow: &[Prefix]) -> Result<Vec<Prefix>> {
    lbctl::prefix::allowlist(service.addr, allow).map_err(|e| Error::msg(format!("--{e}")))
}

/// Checks a parsed command's values and reads what it names; the first
/// problem is the error.
fn request(command: Command) -> Result<Request> {
    Ok(match command {
        Command::Attach(args) => Request::Attach(attach_options(args)),
        Command::Detach { iface } => Request::Detach(iface),
        Command::Drain => Request::Drain,
        Command::Undrain => Request::Undrain,
        Command::Vip(VipCommand::Add {
            service,
            mode,
            snat,
            table_size,
            affinity,
            allow,
            on_backend_gone,
            max_new_flows,
        }) => Request::VipAdd(
            VipSpec::new(service.service(), mode, snat, table_size)?
                .with_ports(service.vip.ports)
                .with_affinity(affinity_of(&affinity)?)
                .with_on_backend_gone(on_backend_gone.unwrap_or_default())
                .with_max_new_flows(limit_of(max_new_flows)?.flatten())
                .with_allow(&allow)
                .map_err(|e| Error::msg(format!("--{e}")))?,
        ),
        Command::Vip(VipCommand::Set {
            service,
            affinity,
            allow,
            allow_all,
            on_backend_gone,
            max_new_flows,
        }) => {
            let service = named(&service)?;
            let affinity = (affinity.affinity.is_some() || affinity.affinity_prefix6.is_some())
                .then(|| affinity_of(&affinity))
                .transpose()?;
            let allow = match (allow.is_empty(), allow_all) {
                (true, false) => None,
                (_, true) => Some(Vec::new()),
                (false, false) => Some(allowlist_of(service, &allow)?),
            };
            if affinity.is_none()
                && allow.is_none()
                && on_backend_gone.is_none()
                && max_new_flows.is_none()
            {
                bail!(
                    "vip set {}: nothing to change: give --affinity, --allow, --allow-all, --on-backend-gone or --max-new-flows",
                    service.addr
                );
            }
            Request::VipSet(
                service,
                affinity,
                allow,
                on_backend_gone,
                limit_of(max_new_flows)?,
            )
        }
        Command::Vip(VipCommand::Del { service }) => Request::VipDel(named(&service)?),
        Command::Vip(VipCommand::Show { service }) => Request::VipShow(named(&service)?),
        Command::Backend(cmd) => {
            let (BackendCommand::Add { target, .. }
            | BackendCommand::Set { target, .. }
            | BackendCommand::Del { target }) = &cmd;
            let service = named(&target.service)?;
            let backend = target.backend;
            check_same_family(service.addr, backend).map_err(Error::msg)?;
            match cmd {
                BackendCommand::Add { weight, .. } => Request::BackendAdd(service, backend, weight),
                BackendCommand::Set { weight, .. } => Request::BackendSet(service, backend, weight),
                BackendCommand::Del { .. } => Request::BackendDel(service, backend),
            }
        }
        Command::List {
            stats,
            rate,
            interval,
            json,
        } => Request::List(ListOptions::new(stats, rate, interval, json).map_err(Error::msg)?),
        Command::Status { conntrackd } => Request::Status(conntrackd),
        Command::Completions { shell } => Request::Completions(shell),
        Command::Manpage { dir } => Request::Manpage(dir),
        Command::Explain {
            client,
            vip,
            proto,
            json,
        } => Request::Explain(
            FlowQuery::new(client, vip, proto).map_err(Error::msg)?,
            json,
        ),
        Command::Conns {
            vip,
            backend,
            proto,
            json,
        } => Request::Conns(
            FlowFilter {
                vip,
                backend,
                proto,
            },
            json,
        ),
        Command::Apply { file, dry_run } => {
            let desired = config_file::read(&file)?;
            Request::Apply(file, desired, dry_run)
        }
        Command::Check { file } => Request::Check(file),
        Command::Save => Request::Save,
        Command::Run(args) => Request::Run(run_options(args)?),
        Command::Timeouts {
            tcp,
            tcpfin,
            udp,
            syn,
            udp_unreplied,
        } => Request::Timeouts(
            Timeouts::new(tcp, tcpfin, udp, syn)
                .and_then(|t| t.with_udp_unreplied(udp_unreplied))
                .map_err(Error::msg)?,
        ),
    })
}

/// The VIP a command names. A port-less VIP is keyed by its address and
/// port 0, whatever its ports: named by a range, it must be the VIP's own.
fn named(arg: &ServiceArg) -> Result<Service> {
    let service = arg.service();
    let ports = arg.vip.ports;
    if service.addr.port() != 0 || ports == Ports::ALL {
        return Ok(service);
    }
    let b = commands::open_for_reading()?;
    if let Some(vip) = b.maps.running()?.vip(&service) {
        if vip.ports != ports {
            bail!(
                "no VIP {}: {}'s port-less VIP for {} is {}",
                vip_name(&service, ports),
                service.addr.ip(),
                service.proto,
                vip_name(&service, vip.ports)
            );
        }
    }
    Ok(service)
}

/// Runs the command module that serves a checked request.
fn dispatch(request: Request) -> Result<()> {
    match request {
        Request::Attach(opts) => commands::attach::run(&opts),
        Request::Detach(iface) => commands::attach::detach(&iface),
        Request::Drain => commands::drain::drain(),
        Request::Undrain => commands::drain::undrain(),
        Request::VipAdd(spec) => commands::vip::add(&spec),
        Request::VipDel(service) => commands::vip::del(&service),
        Request::VipSet(service, affinity, allow, gone, limit) => {
            commands::vip::set(&service, affinity, allow.as_deref(), gone, limit)
        }
        Request::VipShow(service) => commands::vip::show(&service),
        Request::BackendAdd(service, backend, weight) => {
            commands::backend::add(&service, backend, weight)
        }
        Request::BackendSet(service, backend, weight) => {
            commands::backend::set(&service, backend, weight)
        }
        Request::BackendDel(service, backend) => commands::backend::del(&service, backend),
        Request::List(opts) => commands::list::run(&opts),
        Request::Status(conntrackd) => commands::status::run(&conntrackd),
        Request::Completions(shell) => commands::docs::completions(shell),
        Request::Manpage(dir) => commands::docs::manpage(dir.as_deref()),
        Request::Explain(query, json) => commands::explain::run(&query, json),
        Request::Conns(filter, json) => commands::conns::run(&filter, json),
        Request::Apply(file, desired, false) => commands::apply::run(&file, &desired),
        Request::Apply(file, desired, true) => commands::apply::dry_run(&file, &desired),
        Request::Check(file) => commands::check::run(&file),
        Request::Save => commands::save::run(),
        Request::Run(opts) => commands::run::run(&opts),
        Request::Timeouts(t) => commands::timeouts::run(&t),
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
        conntrackd: args.conntrackd,
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
