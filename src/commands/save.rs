//! `lbctl save`: the running configuration, in the configuration file's
//! format, on stdout (`lbctl save > lbctl.toml`; `lbctl apply -f` reads it
//! back to the same configuration).

use anyhow::Result;

use super::open_for_reading;
use crate::config_file;
use crate::service::running;

pub fn run() -> Result<()> {
    let b = open_for_reading()?;
    let desired = running::running(&b)?;
    print!(
        "# lbctl save: the running configuration (lbctl apply -f FILE reads it back)\n{}",
        config_file::render(&desired)
    );
    Ok(())
}
