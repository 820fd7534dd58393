//! The benchmark's own XDP programs (`bpf/livegen.bpf.c`): the generator run
//! with BPF_F_TEST_XDP_LIVE_FRAMES, the counting sink on the backends, and the
//! baseline reflector on the balancer. One loaded object; programs are
//! attached through bpf_links held as plain fds, so attaching can happen on a
//! thread inside the right network namespace.

use std::mem::MaybeUninit;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use libbpf_rs::libbpf_sys;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};

use lbctl_lab::netns;

lbctl_lab::skeleton!(mod skel = "livegen.skel.rs");
use skel::{types, LivegenSkel, LivegenSkelBuilder};

/// A 64-byte Ethernet frame without the FCS, which veth does not carry.
pub const FRAME_LEN: usize = 60;
const MAX_BACKENDS: usize = 16;
const MAX_IFINDEX: u32 = 1024;

/// Which frames the generator makes: flow f (of `flows`, cycled, each for
/// `pkts_per_flow` consecutive frames) comes from
/// `saddr_base + f / ports_per_addr` : `sport_base + f % ports_per_addr`.
#[derive(Clone, Copy, Debug)]
pub struct FlowPlan {
    pub flows: u32,
    pub pkts_per_flow: u32,
    pub ports_per_addr: u32,
    pub saddr_base: Ipv4Addr,
    pub sport_base: u16,
}

/// The fixed part of every generated frame.
#[derive(Clone, Copy, Debug)]
pub struct FrameSpec {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub dst: Ipv4Addr,
    pub dport: u16,
}

/// The reflector's one job: frames to `vip` go to backend hash % n.
pub struct ReflectorSpec {
    pub vip: Ipv4Addr,
    pub vip_port: u16,
    pub backends: Vec<Ipv4Addr>,
    pub backend_port: u16,
}

pub struct Progs {
    skel: LivegenSkel<'static>,
    ncpus: usize,
    sinks: Vec<(String, OwnedFd)>,
    reflector: Option<OwnedFd>,
}

impl Progs {
    pub fn load() -> Result<Progs> {
        // One object per process, alive until exit.
        let storage = Box::leak(Box::new(MaybeUninit::uninit()));
        let open = LivegenSkelBuilder::default()
            .open(storage)
            .context("opening bpf/livegen.bpf.c")?;
        let skel = open.load().context("loading bpf/livegen.bpf.c")?;
        Ok(Progs {
            skel,
            ncpus: libbpf_rs::num_possible_cpus()?,
            sinks: Vec::new(),
            reflector: None,
        })
    }

    fn bss(&mut self) -> &mut types::bss {
        self.skel
            .maps
            .bss_data
            .as_deref_mut()
            .expect("livegen has a .bss")
    }

    // ----- generator ---------------------------------------------------------

    pub fn set_frame(&mut self, f: &FrameSpec) {
        let mut t = [0u8; FRAME_LEN];
        t[0..6].copy_from_slice(&f.dst_mac);
        t[6..12].copy_from_slice(&f.src_mac);
        t[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip = &mut t[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((FRAME_LEN - 14) as u16).to_be_bytes());
        ip[8] = 64; // TTL
        ip[9] = 17; // UDP
        ip[16..20].copy_from_slice(&f.dst.octets()); // saddr and checksum: per frame
        let udp = &mut t[34..42];
        udp[2..4].copy_from_slice(&f.dport.to_be_bytes());
        udp[4..6].copy_from_slice(&((FRAME_LEN - 34) as u16).to_be_bytes());
        // UDP checksum 0: none, so the generator need not update it per flow.
        t[42..51].copy_from_slice(b"livebench");
        self.bss().tmpl = t;
    }

    pub fn set_flows(&mut self, p: &FlowPlan) {
        let bss = self.bss();
        bss.flows = p.flows.max(1);
        bss.pkts_per_flow = p.pkts_per_flow.max(1);
        bss.ports_per_addr = p.ports_per_addr.max(1);
        bss.saddr_base = u32::from(p.saddr_base);
        bss.sport_base = p.sport_base;
    }

    /// Frames the generator has made since load.
    pub fn generated(&mut self) -> u64 {
        self.generator().sent()
    }

    /// Flat out (None), or `burst` frames back to back every burst/rate
    /// seconds.
    pub fn set_pace(&mut self, rate_pps: Option<f64>, burst: u32) {
        let bss = self.bss();
        bss.gap_ns = rate_pps.map_or(0, |r| (1e9 / r.max(1.0)).max(1.0) as u64);
        bss.next_ns = 0;
        bss.burst = burst.max(1);
        bss.burst_left = 0;
    }

    pub fn generator(&mut self) -> Generator {
        Generator {
            prog_fd: self.skel.progs.livegen.as_fd().as_raw_fd(),
            seq: &self.bss().seq,
        }
    }

    // ----- sinks -------------------------------------------------------------

    /// Counts and drops UDP to `port` arriving on `iface` in `ns`.
    pub fn attach_sink(&mut self, ns: &str, iface: &str, port: u16) -> Result<()> {
        self.bss().sink_port = port;
        let fd = self.skel.progs.sink.as_fd().as_raw_fd();
        let link = attach_xdp(ns, iface, fd)?;
        self.sinks.push((format!("{ns}/{iface}"), link));
        Ok(())
    }

    pub fn detach_sinks(&mut self) {
        self.sinks.clear();
    }

    pub fn arrivals(&self) -> Arrivals {
        Arrivals {
            map_fd: self.skel.maps.arrivals.as_fd().as_raw_fd(),
            ncpus: self.ncpus,
        }
    }

    /// Puts the sink, counting UDP to `port`, behind the XDP link that already
    /// holds a program on `iface` in `ns` (the lab's XDP_PASS on the switch
    /// port facing the balancer). Dropping the guard puts the old program back.
    pub fn swap_in_sink(&mut self, ns: &str, iface: &str, port: u16) -> Result<XdpSwap> {
        self.bss().sink_port = port;
        XdpSwap::new(ns, iface, self.skel.progs.sink.as_fd().as_raw_fd())
    }

    // ----- reflector ---------------------------------------------------------

    /// Attaches the reflector to `ifaces[0]` in `ns`, able to send out of any
    /// of `ifaces`.
    pub fn attach_reflector(&mut self, ns: &str, ifaces: &[&str], r: &ReflectorSpec) -> Result<()> {
        if r.backends.is_empty() || r.backends.len() > MAX_BACKENDS {
            bail!("the reflector takes 1 to {MAX_BACKENDS} backends");
        }
        let bss = self.bss();
        bss.vip_addr = u32::from_ne_bytes(r.vip.octets());
        bss.vip_port = u16::from_ne_bytes(r.vip_port.to_be_bytes());
        bss.backend_port = u16::from_ne_bytes(r.backend_port.to_be_bytes());
        bss.n_backends = r.backends.len() as u32;
        for (slot, b) in bss.backend_addrs.iter_mut().zip(&r.backends) {
            *slot = u32::from_ne_bytes(b.octets());
        }
        let map_fd = self.skel.maps.refl_ports.as_fd().as_raw_fd();
        let names: Vec<String> = ifaces.iter().map(|s| s.to_string()).collect();
        netns::in_ns(ns, || -> Result<()> {
            for name in &names {
                let index = ifindex(name)?;
                // SAFETY: key and value are valid u32s for a DEVMAP_HASH.
                let rc = unsafe {
                    libbpf_sys::bpf_map_update_elem(
                        map_fd,
                        (&index as *const u32).cast(),
                        (&index as *const u32).cast(),
                        0,
                    )
                };
                if rc != 0 {
                    bail!("devmap entry for {name}: {}", errno(rc));
                }
            }
            Ok(())
        })??;
        let fd = self.skel.progs.reflector.as_fd().as_raw_fd();
        self.reflector = Some(attach_xdp(ns, ifaces[0], fd)?);
        Ok(())
    }

    pub fn detach_reflector(&mut self) {
        self.reflector = None;
    }
}

/// Reads the sinks' counters; plain fds, so any thread may hold one.
#[derive(Clone, Copy)]
pub struct Arrivals {
    map_fd: RawFd,
    ncpus: usize,
}

impl Arrivals {
    /// Frames counted on the interface with index `ifindex` (in its namespace).
    pub fn on(&self, ifindex: u32) -> Result<u64> {
        percpu_sum(self.map_fd, ifindex % MAX_IFINDEX, self.ncpus)
    }

    pub fn total(&self, ifindexes: &[u32]) -> Result<u64> {
        ifindexes.iter().map(|&i| self.on(i)).sum()
    }
}

/// Runs the generator program: a plain fd and a pointer into the program's
/// .bss, so it can move to the thread that entered the client's namespace.
#[derive(Clone, Copy)]
pub struct Generator {
    prog_fd: RawFd,
    seq: *const u64,
}

// SAFETY: the fd and the mmapped .bss live as long as the loaded object,
// which the process never unloads; `seq` is only read, volatile.
unsafe impl Send for Generator {}

impl Generator {
    /// Frames generated since load.
    pub fn sent(&self) -> u64 {
        // SAFETY: a valid, aligned u64 in the mmapped .bss; volatile because
        // the generator program writes it behind the compiler's back.
        unsafe { std::ptr::read_volatile(self.seq) }
    }

    /// Runs the generator `runs` times on the interface `ifindex` (in the
    /// calling thread's namespace) with BPF_F_TEST_XDP_LIVE_FRAMES, `batch`
    /// runs per flush. Each run sends a frame, unless pacing drops it.
    /// Returns the kernel's time for the call.
    pub fn send(&self, ifindex: u32, runs: u32, batch: u32) -> Result<Duration> {
        let data = [0u8; FRAME_LEN]; // the program writes every byte
        let ctx = libbpf_sys::xdp_md {
            data: 0,
            data_end: FRAME_LEN as u32,
            data_meta: 0,
            ingress_ifindex: ifindex,
            rx_queue_index: 0,
            egress_ifindex: 0,
        };
        let mut opts = libbpf_sys::bpf_test_run_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_test_run_opts>() as _,
            data_in: data.as_ptr().cast(),
            data_size_in: FRAME_LEN as u32,
            ctx_in: (&ctx as *const libbpf_sys::xdp_md).cast(),
            ctx_size_in: std::mem::size_of::<libbpf_sys::xdp_md>() as u32,
            repeat: runs as i32,
            flags: libbpf_sys::BPF_F_TEST_XDP_LIVE_FRAMES,
            batch_size: batch,
            ..Default::default()
        };
        // SAFETY: opts points at buffers that outlive the call; no outputs.
        let rc = unsafe { libbpf_sys::bpf_prog_test_run_opts(self.prog_fd, &mut opts) };
        if rc != 0 {
            bail!("BPF_PROG_TEST_RUN (live frames): {}", errno(rc));
        }
        Ok(Duration::from_nanos(opts.duration as u64 * runs as u64))
    }
}

/// Another program behind an existing XDP bpf_link, until dropped.
pub struct XdpSwap {
    what: String,
    link: OwnedFd,
    original: OwnedFd,
}

impl XdpSwap {
    fn new(ns: &str, iface: &str, prog_fd: RawFd) -> Result<XdpSwap> {
        let what = format!("{iface} in {ns}");
        let index = netns::in_ns(ns, || ifindex(iface))??;
        let mut prog_id = 0u32;
        let rc = netns::in_ns(ns, || {
            // SAFETY: valid out pointer; netlink query in this namespace.
            unsafe { libbpf_sys::bpf_xdp_query_id(index as i32, 0, &mut prog_id) }
        })?;
        if rc != 0 || prog_id == 0 {
            bail!("no XDP program on {what} to swap out ({})", errno(rc));
        }
        let link = link_of_prog(prog_id).with_context(|| format!("the XDP link of {what}"))?;
        // SAFETY: plain bpf(2) wrappers; fds checked below.
        let original = unsafe { libbpf_sys::bpf_prog_get_fd_by_id(prog_id) };
        if original < 0 {
            bail!("opening program {prog_id}: {}", errno(original));
        }
        // SAFETY: a fresh fd that nobody else owns.
        let original = unsafe { OwnedFd::from_raw_fd(original) };
        // SAFETY: valid link and program fds.
        let rc =
            unsafe { libbpf_sys::bpf_link_update(link.as_raw_fd(), prog_fd, std::ptr::null()) };
        if rc != 0 {
            bail!("swapping the program on {what}: {}", errno(rc));
        }
        Ok(XdpSwap {
            what,
            link,
            original,
        })
    }
}

impl Drop for XdpSwap {
    fn drop(&mut self) {
        // SAFETY: valid link and program fds.
        let rc = unsafe {
            libbpf_sys::bpf_link_update(
                self.link.as_raw_fd(),
                self.original.as_raw_fd(),
                std::ptr::null(),
            )
        };
        if rc != 0 {
            eprintln!(
                "livebench: restoring the program on {}: {}",
                self.what,
                errno(rc)
            );
        }
    }
}

/// The bpf_link holding program `prog_id` (programs the lab attaches are
/// loaded once per attachment, so the id names one link).
fn link_of_prog(prog_id: u32) -> Result<OwnedFd> {
    let mut id = 0u32;
    // SAFETY: plain bpf(2) wrappers with valid out pointers.
    while unsafe { libbpf_sys::bpf_link_get_next_id(id, &mut id) } == 0 {
        let fd = unsafe { libbpf_sys::bpf_link_get_fd_by_id(id) };
        if fd < 0 {
            continue; // gone meanwhile
        }
        // SAFETY: a fresh fd that nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: all-zero is a valid bpf_link_info.
        let mut info: libbpf_sys::bpf_link_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of_val(&info) as u32;
        let rc =
            unsafe { libbpf_sys::bpf_link_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
        if rc == 0 && info.prog_id == prog_id && info.type_ == libbpf_sys::BPF_LINK_TYPE_XDP {
            return Ok(fd);
        }
    }
    bail!("no bpf_link holds program {prog_id}")
}

/// Sum over CPUs of a u64 per-CPU array element.
fn percpu_sum(map_fd: RawFd, key: u32, ncpus: usize) -> Result<u64> {
    let mut values = vec![0u64; ncpus];
    // SAFETY: a per-CPU map of u64 values fills ncpus * 8 bytes.
    let rc = unsafe {
        libbpf_sys::bpf_map_lookup_elem(
            map_fd,
            (&key as *const u32).cast(),
            values.as_mut_ptr().cast(),
        )
    };
    if rc != 0 {
        bail!("reading per-CPU counter {key}: {}", errno(rc));
    }
    Ok(values.iter().sum())
}

/// Attaches program `prog_fd` in native mode to `iface` of namespace `ns`
/// through a bpf_link; closing the returned fd detaches it.
pub fn attach_xdp(ns: &str, iface: &str, prog_fd: RawFd) -> Result<OwnedFd> {
    netns::in_ns(ns, || -> Result<OwnedFd> {
        let index = ifindex(iface)?;
        let opts = libbpf_sys::bpf_link_create_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as _,
            flags: 4, // XDP_FLAGS_DRV_MODE: native, as on real hardware
            ..Default::default()
        };
        // SAFETY: valid fd and options; the kernel returns a new fd or -errno.
        let fd = unsafe {
            libbpf_sys::bpf_link_create(prog_fd, index as i32, libbpf_sys::BPF_XDP, &opts)
        };
        if fd < 0 {
            bail!("attaching XDP to {iface} in {ns}: {}", errno(fd));
        }
        // SAFETY: a fresh fd that nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    })?
}

/// Interface index in the calling thread's namespace.
pub fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: a valid C string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => bail!("no interface {name} here"),
        i => Ok(i),
    }
}

fn errno(rc: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(rc.abs())
}
