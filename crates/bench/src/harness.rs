//! The harness program (bpf/harness.bpf.c) from Rust: what frame each
//! repetition starts from, whether it becomes a new flow, which program runs
//! after it, and one BPF_PROG_TEST_RUN call.

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use anyhow::{bail, Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, OpenObject, ProgramInput};

lbctl::include_skeleton!(skel, "harness.skel.rs");
use skel::{HarnessSkel, HarnessSkelBuilder};

pub use lbctl_lab::fixtures::{action_name, XDP_ABORTED, XDP_PASS, XDP_REDIRECT, XDP_TX};

/// Must match HARNESS_MAX_FRAME in bpf/harness.bpf.c (the skeleton's array
/// size says it too).
const MAX_FRAME: usize = 256;

/// What runs after the harness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Nothing: the harness's own cost (it returns XDP_ABORTED).
    Empty,
    /// The MAC-swap XDP_TX baseline in the harness object.
    Baseline,
    /// lbctl's program.
    Lbctl,
}

/// How the repetitions of one run vary.
#[derive(Clone, Copy, Debug)]
pub enum Vary {
    /// Every repetition sees the same frame.
    None,
    /// Repetition i is flow number `first + i`, its destination one of
    /// `vips` consecutive addresses (see bpf/harness.bpf.c).
    NewFlows { first: u32, vips: u32 },
}

/// One BPF_PROG_TEST_RUN call through the harness.
pub struct Run {
    /// Average per repetition, as the kernel timed it (ns, truncated).
    pub ns: u64,
    /// What the last repetition returned.
    pub action: u32,
    /// The frame as the last repetition left it.
    pub out: Vec<u8>,
}

pub struct Harness<'o> {
    skel: HarnessSkel<'o>,
    lbctl_fd: i32,
    current: Target,
    /// xdp_md for test runs: the frame arrives on this interface.
    ingress_ifindex: u32,
}

impl<'o> Harness<'o> {
    /// Loads the harness; `lbctl` is the loaded lbctl program it can call.
    pub fn load(
        storage: &'o mut MaybeUninit<OpenObject>,
        lbctl: BorrowedFd,
        ingress_ifindex: u32,
    ) -> Result<Harness<'o>> {
        let open = HarnessSkelBuilder::default()
            .open(storage)
            .context("opening the harness object")?;
        let skel = open
            .load()
            .context("loading the harness (bpf/harness.bpf.c)")?;
        Ok(Harness {
            skel,
            lbctl_fd: lbctl.as_raw_fd(),
            current: Target::Empty,
            ingress_ifindex,
        })
    }

    /// Puts `target` in the harness's slot (a direct jump the JIT patches).
    pub fn set_target(&mut self, target: Target) -> Result<()> {
        if target == self.current {
            return Ok(());
        }
        let key = 0u32.to_ne_bytes();
        let fd = match target {
            Target::Empty => {
                self.skel
                    .maps
                    .target
                    .delete(&key)
                    .context("emptying the harness slot")?;
                self.current = target;
                return Ok(());
            }
            Target::Baseline => self.skel.progs.mac_swap_tx.as_fd().as_raw_fd(),
            Target::Lbctl => self.lbctl_fd,
        };
        self.skel
            .maps
            .target
            .update(&key, &(fd as u32).to_ne_bytes(), MapFlags::ANY)
            .with_context(|| format!("putting {target:?} in the harness slot"))?;
        self.current = target;
        Ok(())
    }

    /// Runs `frame` `repeat` times through the harness and the current
    /// target.
    pub fn run(&mut self, frame: &[u8], vary: Vary, repeat: u32) -> Result<Run> {
        if frame.len() > MAX_FRAME {
            bail!(
                "frame of {} bytes: the harness holds {MAX_FRAME}",
                frame.len()
            );
        }
        let bss = self
            .skel
            .maps
            .bss_data
            .as_deref_mut()
            .context("the harness has no .bss")?;
        bss.frame[..frame.len()].copy_from_slice(frame);
        bss.frame_len = frame.len() as u32;
        match vary {
            Vary::None => bss.vary = 0,
            Vary::NewFlows { first, vips } => {
                bss.vary = 1;
                bss.vary_vips = vips.max(1);
                bss.next_flow = first;
            }
        }
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex. The kernel takes data_end as the
        // frame length and uses the interface for FIB lookups and conntrack.
        let md: [u32; 6] = [0, frame.len() as u32, 0, self.ingress_ifindex, 0, 0];
        let mut ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mut out = vec![0u8; frame.len() + 256];
        let input = ProgramInput {
            context_in: Some(&mut ctx),
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        };
        let output = self
            .skel
            .progs
            .harness
            .test_run(input)
            .context("BPF_PROG_TEST_RUN of the harness")?;
        let action = output.return_value;
        let ns = output.duration.as_nanos() as u64;
        let out = output.data.map(|d| d.to_vec()).unwrap_or_default();
        Ok(Run { ns, action, out })
    }

    /// The flow number the next repetition would get (to check that every
    /// repetition of a new-flow run was one).
    pub fn next_flow(&self) -> u32 {
        self.skel
            .maps
            .bss_data
            .as_deref()
            .map(|b| {
                // SAFETY: a plain u32 in the mmapped .bss; the program wrote
                // it during the test run, which has returned.
                unsafe { std::ptr::read_volatile(&b.next_flow) }
            })
            .unwrap_or(0)
    }
}
