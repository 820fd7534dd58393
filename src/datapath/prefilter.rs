//! The address prefilter (`addr_filter`, `bpf/lb_abi.h`): one bit per hashed
//! address, for VIP addresses and for backend addresses. A clear bit lets
//! the data path skip a hash lookup, so lbctl sets a bit before the address
//! enters the map it guards and clears bits only by recomputing them from
//! those maps: a clear bit is always right.

use std::net::IpAddr;

use anyhow::Result;
use libbpf_rs::MapFlags;

use super::abi::{
    LB_PREFILTER_DST, LB_PREFILTER_MULT, LB_PREFILTER_SHIFT, LB_PREFILTER_SRC, LB_PREFILTER_WORDS,
};
use super::codec::from_endpoint;
use super::maps::{u32_of, Maps};
use super::types::lb_endpoint;

/// Which bitmap: addresses of VIPs (as destinations) or of backends (as
/// sources).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Set {
    Vips,
    Backends,
}

impl Set {
    fn first_word(self) -> u32 {
        match self {
            Set::Vips => LB_PREFILTER_DST,
            Set::Backends => LB_PREFILTER_SRC,
        }
    }
}

/// The prefilter bit of an address (`bpf/lb_abi.h`): the address's
/// network-order bytes as native u32 words (IPv6: its four words XORed),
/// times `LB_PREFILTER_MULT`, the top 16 bits.
pub fn prefilter_bit(ip: IpAddr) -> u32 {
    let word = match ip {
        IpAddr::V4(a) => u32::from_ne_bytes(a.octets()),
        IpAddr::V6(a) => a
            .octets()
            .chunks_exact(4)
            .map(|w| u32::from_ne_bytes([w[0], w[1], w[2], w[3]]))
            .fold(0, |acc, w| acc ^ w),
    };
    word.wrapping_mul(LB_PREFILTER_MULT) >> LB_PREFILTER_SHIFT
}

/// Word index and mask of an address in a set.
fn slot(set: Set, ip: IpAddr) -> (u32, u64) {
    let bit = prefilter_bit(ip);
    (set.first_word() + bit / 64, 1u64 << (bit % 64))
}

impl Maps {
    fn prefilter_word(&self, word: u32) -> Result<u64> {
        self.addr_filter
            .require(&word.to_ne_bytes(), &format_args!("prefilter word {word}"))
    }

    fn set_prefilter_word(&self, word: u32, value: u64) -> Result<()> {
        self.addr_filter.put(
            &word.to_ne_bytes(),
            &value,
            MapFlags::ANY,
            &format_args!("prefilter word {word}"),
        )
    }

    /// Sets an address's bit; called before the address goes into the map
    /// the bit guards, so the data path never skips a lookup it needs.
    pub fn prefilter_mark(&self, set: Set, ip: IpAddr) -> Result<()> {
        let (word, mask) = slot(set, ip);
        let old = self.prefilter_word(word)?;
        if old & mask == 0 {
            self.set_prefilter_word(word, old | mask)?;
        }
        Ok(())
    }

    /// Recomputes both bitmaps from `vips` and `reply_sources`: clears the
    /// bits no address needs any more (a deleted VIP) and sets any missing
    /// one (a program upgraded in place over older maps). Every bit a present
    /// address needs stays set throughout. Returns whether a word changed.
    pub fn rebuild_prefilter(&self) -> Result<bool> {
        let mut want = vec![0u64; 2 * LB_PREFILTER_WORDS as usize];
        for (set, map) in [
            (Set::Vips, &self.vips),
            (Set::Backends, &self.reply_sources),
        ] {
            for (key, _) in map.entries(&"addresses for the prefilter")?.iter() {
                let ep: lb_endpoint = super::codec::read(key)?;
                let (addr, _) = from_endpoint(&ep)?;
                let (word, mask) = slot(set, addr.ip());
                want[word as usize] |= mask;
            }
        }
        let have = self.prefilter_words()?;
        let mut changed = false;
        for (word, (want, have)) in (0u32..).zip(want.into_iter().zip(have)) {
            if want != have {
                self.set_prefilter_word(word, want)?;
                changed = true;
            }
        }
        Ok(changed)
    }

    /// Whether an address's bit is set.
    pub fn prefilter_has(&self, set: Set, ip: IpAddr) -> Result<bool> {
        let (word, mask) = slot(set, ip);
        Ok(self.prefilter_word(word)? & mask != 0)
    }

    /// Both bitmaps as they are (for tests and `lbctl status`).
    pub fn prefilter_words(&self) -> Result<Vec<u64>> {
        let mut words = vec![0u64; 2 * LB_PREFILTER_WORDS as usize];
        for (key, value) in self.addr_filter.entries(&"prefilter words")?.iter() {
            let i = u32_of(key, &"prefilter key")? as usize;
            if let Some(w) = words.get_mut(i) {
                *w = super::codec::read(value)?;
            }
        }
        Ok(words)
    }
}
