//! The command line, as clap sees it: definitions only. Values are parsed
//! into `model` types by `model`'s parsers; `main` turns a parsed command
//! into a request and hands it to its command module.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::model::{
    parse_backend, parse_endpoint, parse_ip, parse_listen, parse_vip, parse_weight, NatMode,
    OnBackendGone, Proto, Service, VipAddr, XdpMode, FLOW_CACHE_SIZES,
};
use crate::prefix::Prefix;

/// A limit on new flows a second, checked here (0: no limit); main.rs
/// turns it into the model's `Option`.
fn parse_max_new_flows(s: &str) -> Result<u64, String> {
    crate::model::parse_max_new_flows(s).map(|n| n.map_or(0, u64::from))
}

fn parse_on_backend_gone(s: &str) -> Result<OnBackendGone, String> {
    s.parse()
}

#[derive(Parser, Debug)]
#[command(
    name = "lbctl",
    version,
    about = "Layer-4 load balancer in XDP; connections stay on their backend through the kernel's conntrack",
    after_help = "Example:\n  lbctl attach eth0\n  lbctl vip add 198.18.100.1:80 --mode fullnat\n  lbctl backend add 198.18.100.1:80 198.18.1.11:8080\n  lbctl list --stats"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Load the balancer and attach it to an interface (returns at once; it keeps running).
    Attach(AttachArgs),
    /// Detach from an interface; the last detach removes all state.
    Detach {
        /// Interface name, e.g. eth0.
        iface: String,
    },
    /// Take this balancer out of service: withdraw every VIP route (BGP), keep forwarding what arrives.
    Drain,
    /// Announce this balancer's VIP routes again after `lbctl drain`.
    Undrain,
    /// Add, delete or show virtual services (VIPs).
    #[command(subcommand)]
    Vip(VipCommand),
    /// Add, delete or reweight real servers (backends) of a VIP.
    #[command(subcommand)]
    Backend(BackendCommand),
    /// List VIPs and backends (like ipvsadm -L -n).
    List {
        /// Packets, bytes and new flows per VIP and backend.
        #[arg(long)]
        stats: bool,
        /// New flows, packets and bytes per second over --interval (ipvsadm --rate).
        #[arg(long)]
        rate: bool,
        /// Seconds the rates are measured over.
        #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
        interval: f64,
        /// Machine-readable output (docs/JSON.md).
        #[arg(long)]
        json: bool,
    },
    /// Attached interfaces, program, kernel, replication, and verdict counters.
    Status {
        /// conntrackd's control socket (its file's UNIX Path), for the replication line.
        #[arg(long, value_name = "SOCKET", default_value = crate::host::conntrackd::DEFAULT_SOCKET)]
        conntrackd: PathBuf,
    },
    /// Where a flow goes and why: its conntrack entry, or the backend a new flow would get now.
    Explain {
        /// The client's address and port, e.g. 198.18.0.2:40000.
        #[arg(value_parser = parse_endpoint)]
        client: SocketAddr,
        /// The VIP's address and port.
        #[arg(value_parser = parse_endpoint)]
        vip: SocketAddr,
        /// Protocol.
        #[arg(long, default_value = "tcp", value_parser = clap::value_parser!(Proto))]
        proto: Proto,
        /// Machine-readable output (docs/JSON.md).
        #[arg(long)]
        json: bool,
    },
    /// lbctl's live flows from the kernel's conntrack table (like ipvsadm -L -c -n).
    Conns {
        /// Only flows to this VIP (ADDR:PORT; ADDR:0 any port, ADDR:FIRST-LAST a range).
        #[arg(long, value_parser = parse_vip)]
        vip: Option<VipAddr>,
        /// Only flows to this backend (ADDR:PORT; the address alone: any port).
        #[arg(long, value_parser = parse_backend)]
        backend: Option<SocketAddr>,
        /// Only flows of this protocol.
        #[arg(long, value_parser = clap::value_parser!(Proto))]
        proto: Option<Proto>,
        /// Machine-readable output (docs/JSON.md).
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh or fish) to standard output.
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the lbctl(8) man page (roff), or write it and one page per command into a directory.
    Manpage {
        /// Write lbctl.8 and lbctl-COMMAND.8 (e.g. lbctl-vip-add.8) here instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
    /// Make the running balancer match a configuration file (only what differs changes).
    Apply {
        /// The configuration file (TOML; see `lbctl save` for its shape).
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
        /// Print what would change (+ added, - removed, ~ changed), change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check a configuration file without applying it (no root needed): one line per problem, FILE:LINE: what.
    Check {
        /// The configuration file (TOML; see `lbctl save` for its shape).
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// Print the running configuration in the configuration file's format.
    Save,
    /// Run as a service: attach, apply the file, check health, reload on SIGHUP.
    Run(RunArgs),
    /// Show or set flow idle timeouts in seconds (like ipvsadm --set).
    Timeouts {
        /// Established TCP flows.
        #[arg(long)]
        tcp: Option<u32>,
        /// TCP flows after FIN or RST.
        #[arg(long)]
        tcpfin: Option<u32>,
        /// UDP flows.
        #[arg(long)]
        udp: Option<u32>,
        /// A TCP flow until the client completes its handshake (1-600;
        /// default 10): short, so a SYN flood cannot fill the table.
        #[arg(long)]
        syn: Option<u32>,
        /// A UDP flow until the backend answers (1-600; default 30): short,
        /// so spoofed datagrams cannot hold the table.
        #[arg(long)]
        udp_unreplied: Option<u32>,
    },
}

/// Shells `lbctl completions` writes for.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Args, Debug)]
pub struct AttachArgs {
    /// Interface name, e.g. eth0.
    pub iface: String,
    /// Where XDP runs: auto (native if the driver can), native, or generic.
    #[arg(long, value_enum, default_value_t = XdpMode::Auto)]
    pub mode: XdpMode,
    /// Stay in front; Ctrl-C detaches.
    #[arg(long)]
    pub foreground: bool,
    /// Load a fresh program and swap it in atomically, keeping all state.
    #[arg(long)]
    pub replace: bool,
    /// Flow hash seed: balancers with the same seed and configuration pick the same backends.
    #[arg(long)]
    pub hash_seed: Option<u32>,
    /// Flow cache entries, one per direction of an active flow [default: 65536]. Above that,
    /// flows still work but more packets take the slow path (conntrack and FIB lookups).
    #[arg(long, value_name = "ENTRIES", value_parser = clap::value_parser!(u32).range(*FLOW_CACHE_SIZES.start() as i64..=*FLOW_CACHE_SIZES.end() as i64))]
    pub flow_cache_size: Option<u32>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The configuration file; re-read on SIGHUP.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (a bare PORT listens on 127.0.0.1).
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_listen)]
    pub metrics: Option<SocketAddr>,
    /// On SIGTERM/SIGINT detach from the file's interfaces (default: leave the data path running).
    #[arg(long)]
    pub detach_on_exit: bool,
    /// On SIGTERM/SIGINT withdraw every VIP route (BGP) even if the data path keeps running.
    #[arg(long)]
    pub withdraw_on_exit: bool,
    /// conntrackd's control socket: its sync state in /metrics (default: the default socket, once a conntrackd answers there).
    #[arg(long, value_name = "SOCKET")]
    pub conntrackd: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ServiceArg {
    /// VIP address and port, e.g. 198.18.100.1:80 or [2001:db8::1]:80; port 0 for every
    /// port (198.18.100.1:0) or a range (198.18.100.1:8000-8099).
    #[arg(value_parser = parse_vip)]
    pub vip: VipAddr,
    /// Protocol.
    #[arg(long, default_value = "tcp", value_parser = clap::value_parser!(Proto))]
    pub proto: Proto,
}

impl ServiceArg {
    pub fn service(&self) -> Service {
        Service {
            addr: self.vip.addr,
            proto: self.proto,
        }
    }
}

impl clap::builder::ValueParserFactory for Proto {
    type Parser = fn(&str) -> Result<Proto, String>;
    fn value_parser() -> Self::Parser {
        |s| s.parse()
    }
}

#[derive(Subcommand, Debug)]
pub enum VipCommand {
    /// Add a VIP.
    Add {
        #[command(flatten)]
        service: ServiceArg,
        /// How packets reach backends: dnat keeps the client address (backends
        /// route replies through lbctl); fullnat also rewrites the source
        /// (backends need no route back); dsr changes only the MAC (backends
        /// on a link of the balancer hold the VIP and answer clients
        /// directly); tunnel encapsulates in IPIP or ip6ip6 (backends anywhere
        /// routable decapsulate, hold the VIP and answer directly). dsr and
        /// tunnel backends listen on the VIP's port.
        #[arg(long, value_enum, default_value_t = NatMode::Dnat)]
        mode: NatMode,
        /// Source address for fullnat, and tunnel's outer source (default: the
        /// attached interface's address).
        #[arg(long, value_parser = parse_ip)]
        snat: Option<IpAddr>,
        /// Maglev table size, a prime, kept whatever the backends (default:
        /// sized by lbctl, 100 slots per backend, growing as they are added).
        #[arg(long)]
        table_size: Option<u32>,
        #[command(flatten)]
        affinity: AffinityArg,
        /// Only clients in this prefix may begin flows (repeatable, e.g.
        /// 198.18.0.0/24; a bare address is one host). Default: everyone.
        #[arg(long, value_name = "CIDR")]
        allow: Vec<Prefix>,
        /// The live flows of a backend removed or marked down: keep them on it
        /// (default); reassign (UDP: the next datagram goes to the backend picked
        /// now) or reset (TCP: the next packet reaches a backend that resets it),
        /// both by removing their conntrack entries.
        #[arg(long, value_name = "POLICY", value_parser = parse_on_backend_gone)]
        on_backend_gone: Option<OnBackendGone>,
        /// At most N new flows a second begin (more are dropped before any
        /// entry; live flows never are); 0 or absent: no limit.
        #[arg(long, value_name = "N", value_parser = parse_max_new_flows)]
        max_new_flows: Option<u64>,
    },
    /// Change a VIP's client affinity, source allowlist, on-backend-gone
    /// policy or limit on new flows (its new flows only: live flows keep
    /// their backend and are not checked again), like ipvsadm -E.
    Set {
        #[command(flatten)]
        service: ServiceArg,
        #[command(flatten)]
        affinity: AffinityArg,
        /// The new source allowlist, replacing the old (repeatable).
        #[arg(long, value_name = "CIDR", conflicts_with = "allow_all")]
        allow: Vec<Prefix>,
        /// Remove the source allowlist: every client may begin flows.
        #[arg(long)]
        allow_all: bool,
        /// keep, reassign or reset: see vip add.
        #[arg(long, value_name = "POLICY", value_parser = parse_on_backend_gone)]
        on_backend_gone: Option<OnBackendGone>,
        /// The new limit on new flows a second (0: none).
        #[arg(long, value_name = "N", value_parser = parse_max_new_flows)]
        max_new_flows: Option<u64>,
    },
    /// Delete a VIP and its backends.
    Del {
        #[command(flatten)]
        service: ServiceArg,
    },
    /// Show a VIP's table: size, each backend's share, the last change's disruption.
    Show {
        #[command(flatten)]
        service: ServiceArg,
    },
}

#[derive(Args, Debug)]
pub struct AffinityArg {
    /// client: every flow of one client address to one backend (the
    /// client's port left out of the hash; like ipvsadm -p, but conntrack
    /// keeps each flow, not a timeout); none: each flow hashed on its own.
    /// (vip add: default none; vip set: unchanged unless given.)
    #[arg(long, value_parser = ["none", "client"])]
    pub affinity: Option<String>,
    /// With --affinity client: the bits of an IPv6 client address that
    /// count (1-128, default 128: the whole address; 64: one /64 is one client).
    #[arg(long, value_name = "BITS")]
    pub affinity_prefix6: Option<u32>,
}

#[derive(Args, Debug)]
pub struct BackendArg {
    #[command(flatten)]
    pub service: ServiceArg,
    /// Backend address and port, e.g. 198.18.1.11:8080; the address alone for a VIP of
    /// every port or a range (its backends get the client's port).
    #[arg(value_parser = parse_backend)]
    pub backend: SocketAddr,
}

#[derive(Subcommand, Debug)]
pub enum BackendCommand {
    /// Add a backend to a VIP.
    Add {
        #[command(flatten)]
        target: BackendArg,
        /// Share of new flows relative to the VIP's other backends (0 drains).
        #[arg(long, default_value = "1", value_parser = parse_weight)]
        weight: u32,
    },
    /// Change a backend's weight; 0 drains it (no new flows, live flows stay).
    Set {
        #[command(flatten)]
        target: BackendArg,
        #[arg(long, value_parser = parse_weight)]
        weight: u32,
    },
    /// Remove a backend from a VIP (live flows to it keep going).
    Del {
        #[command(flatten)]
        target: BackendArg,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// A command line as a user types it, after `lbctl`.
    fn parse(line: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("lbctl").chain(line.split_whitespace()))
    }

    #[test]
    fn parses_the_contract() {
        let cli = parse("vip add 198.18.100.1:80 --proto udp --mode fullnat --snat 198.18.2.1");
        match cli.unwrap().command {
            Command::Vip(VipCommand::Add {
                service,
                mode,
                snat,
                ..
            }) => {
                assert_eq!(service.proto, Proto::Udp);
                assert_eq!(mode, NatMode::Fullnat);
                assert_eq!(snat.unwrap().to_string(), "198.18.2.1");
            }
            other => panic!("{other:?}"),
        }
        let cli = parse("backend set 198.18.100.1:80 198.18.1.11:8080 --weight 0").unwrap();
        assert!(matches!(
            cli.command,
            Command::Backend(BackendCommand::Set { weight: 0, .. })
        ));
        assert!(parse("backend add 198.18.100.1:80 198.18.1.11:8080 --weight 70000").is_err());
        assert!(parse("vip add 198.18.100.1").is_err());
        for mode in NatMode::ALL {
            let cli = parse(&format!("vip add 198.18.100.1:80 --mode {mode}")).unwrap();
            assert!(
                matches!(cli.command, Command::Vip(VipCommand::Add { mode: m, .. }) if m == mode)
            );
        }
        // The flow cache's range is model's, as the file's is.
        let (lo, hi) = (FLOW_CACHE_SIZES.start(), FLOW_CACHE_SIZES.end());
        assert!(parse(&format!("attach eth0 --flow-cache-size {lo}")).is_ok());
        assert!(parse(&format!("attach eth0 --flow-cache-size {hi}")).is_ok());
        assert!(parse(&format!("attach eth0 --flow-cache-size {}", lo - 1)).is_err());
        assert!(parse(&format!("attach eth0 --flow-cache-size {}", hi + 1)).is_err());
        let cli = parse("attach eth0 --mode generic --foreground").unwrap();
        assert!(matches!(
            cli.command,
            Command::Attach(AttachArgs {
                mode: XdpMode::Generic,
                foreground: true,
                ..
            })
        ));
    }
}
