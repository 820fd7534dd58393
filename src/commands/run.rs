//! `lbctl run -f FILE`: the service (`service::run`).

use anyhow::Result;

use crate::service::run::{self, RunOptions};

pub fn run(opts: &RunOptions) -> Result<()> {
    run::run(opts)
}
