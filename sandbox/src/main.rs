//! `paddock`: the rootless VMM's one binary.

mod check;
mod cli;
mod config;
mod default_guest;
mod placement;
mod policy;
mod privilege;
mod run;
mod seccomp;
mod shutdown_signals;
mod virtiofsd;

use clap::Parser;
use std::process::ExitCode;

/// Exit status for anything that stops a VM from starting: bad input or an unusable host.
pub const EXIT_CANNOT_START: u8 = 2;
/// Exit status when the guest did not end by powering off (reset, vCPU fault).
pub const EXIT_GUEST_FAILED: u8 = 1;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("PADDOCK_LOG", "warn"))
        .format_timestamp_millis()
        .init();
    let cli = cli::Cli::parse();
    match cli.command {
        cli::Command::Run(args) => run::run(cli.user.as_deref(), *args),
        cli::Command::Check(args) => check::check(cli.user.as_deref(), *args),
        cli::Command::Policy(args) => policy::print(&args),
        cli::Command::Virtiofsd(args) => virtiofsd::run(cli.user.as_deref(), args),
    }
}
