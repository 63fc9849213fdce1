//! `paddock policy selinux|scc|seccomp`: what a cluster admin installs for Paddock's pods, and the
//! seccomp filter table Paddock applies to itself.

pub mod scc;
pub mod seccomp_table;
pub mod seed;
pub mod selinux;

use crate::cli::{PolicyArgs, PolicyKind};
use std::io::Write;
use std::process::ExitCode;

pub fn print(args: &PolicyArgs) -> ExitCode {
    let text = match (args.kind, args.summary) {
        (PolicyKind::Selinux, _) => selinux::module(),
        (PolicyKind::Scc, _) => scc::constraints(),
        (PolicyKind::Seccomp, false) => seccomp_table::table(),
        (PolicyKind::Seccomp, true) => seccomp_table::summary(),
    };
    match std::io::stdout().write_all(text.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("paddock: writing the policy to stdout: {e}");
            ExitCode::from(crate::EXIT_CANNOT_START)
        }
    }
}
