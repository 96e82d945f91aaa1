//! `catchup completions SHELL` and `catchup man`: shell completion scripts (`clap_complete`) and manual pages
//! (`clap_mangen`), both generated from the same clap definitions as `--help`, so they never disagree
//! with it.

use std::io::Write;

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::{Cli, CompletionsArgs, Exit, ManArgs};

/// `catchup completions SHELL`: the completion script on stdout.
pub fn completions(args: CompletionsArgs) -> Result<Exit> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "catchup", &mut out);
    std::io::stdout().lock().write_all(&out)?;
    Ok(Exit::Ok)
}

/// `catchup man`: catchup(1) on stdout, or with `--dir` one page per command written there.
pub fn man(args: ManArgs) -> Result<Exit> {
    let cmd = Cli::command();
    match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("cannot write manual pages into {}", dir.display()))?;
        }
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            std::io::stdout().lock().write_all(&out)?;
        }
    }
    Ok(Exit::Ok)
}
