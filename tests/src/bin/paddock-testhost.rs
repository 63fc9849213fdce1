//! `paddock-testhost [--root] [--timeout SECS] -- SHELL_COMMAND`: runs one shell command where a real
//! Linux guest can run: directly on a hardware-backed /dev/kvm, else inside the KVM test host (an L1
//! Linux with kvm-amd under QEMU TCG). `paddock` is on PATH there and `$GUEST` holds the default guest.
//! Prints the command's output and exits with its status.

use anyhow::{bail, Context, Result};
use clap::Parser;
use paddock_tests::testhost::{RunAs, Scenario};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "paddock-testhost",
    about = "Run a shell command on a real KVM (directly or in the KVM test host)"
)]
struct Cli {
    /// Run as root instead of the unprivileged user (uid 1000).
    #[arg(long)]
    root: bool,
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// A cpio archive added to the test host's initramfs (e.g. target/testhost/qemu/qemu-layer.cpio
    /// for a QEMU peer); repeatable.
    #[arg(long = "layer")]
    layers: Vec<std::path::PathBuf>,
    /// Another program to put on PATH there (with the libraries it needs), e.g.
    /// target/virtiofsd/bin/virtiofsd. Repeatable.
    #[arg(long = "with", value_name = "PATH")]
    with: Vec<std::path::PathBuf>,
    /// The shell command.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    let run_as = if cli.root { RunAs::Root } else { RunAs::User };
    let mut scenario = Scenario::new("paddock-testhost");
    for layer in &cli.layers {
        if !layer.is_file() {
            bail!(
                "--layer {}: no such file (build it, e.g. resources/testhost/build-qemu-layer.sh target/testhost/qemu)",
                layer.display()
            );
        }
        scenario.extra_layer(layer);
    }
    for b in &cli.with {
        scenario.binary(b);
    }
    scenario.check(
        "command",
        run_as,
        Duration::from_secs(cli.timeout),
        &cli.command.join(" "),
    );
    let Some(report) = scenario.run().context("running the command")? else {
        bail!("skipped: no way to run a Linux guest here (see the reason above)");
    };
    let r = report.check("command");
    print!("{}", r.stdout);
    eprint!("{}", r.stderr);
    if let Some(why) = &r.not_run {
        bail!("the command did not run: {why}");
    }
    Ok(ExitCode::from(r.status.clamp(0, 255) as u8))
}
