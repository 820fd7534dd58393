//! `lbctl timeouts`: show or set flow idle timeouts (ipvsadm --set).

use anyhow::Result;

use super::open_for_change;
use crate::change::plan::Kind;
use crate::model::Timeouts;

pub fn run(t: &Timeouts) -> Result<()> {
    let s = open_for_change()?;
    let b = s.running()?;
    let (now, _) = s.run(Kind::Configure, |_| b.maps.set_timeouts(t))?;
    println!(
        "Timeout (tcp tcpfin udp syn udp-unreplied): {} {} {} {} {}",
        now.tcp.unwrap_or(0),
        now.tcpfin.unwrap_or(0),
        now.udp.unwrap_or(0),
        now.syn.unwrap_or(0),
        now.udp_unreplied.unwrap_or(0)
    );
    Ok(())
}
