//! `macvtap-lab`: parses, runs the lab (or prints the guest's QEMU
//! arguments), prints; see `macvtap-lab --help`.

use std::process::ExitCode;

use clap::Parser;
use macvtap_lab::cli::{Cli, Command, GuestArgs};
use macvtap_lab::{guest, LabError};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error(transparent)]
    Guest(#[from] guest::GuestError),
    #[error("cannot encode JSON")]
    Json(#[from] serde_json::Error),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            macvtapctl::print_error("macvtap-lab", &e);
            match e {
                MainError::Lab(lab) => ExitCode::from(lab.exit_code()),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn print_json(value: &impl Serialize) -> Result<(), MainError> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn run(cli: &Cli) -> Result<(), MainError> {
    match &cli.command {
        None => {
            let report = macvtap_lab::run(&cli.lab, cli.json)?;
            if cli.json {
                print_json(&report)?;
            }
        }
        Some(Command::Guest(args)) => print_guest(args, cli.json)?,
    }
    Ok(())
}

/// `guest`: the QEMU arguments that boot the lab's guest.
fn print_guest(args: &GuestArgs, json: bool) -> Result<(), MainError> {
    let ensured = guest::ensure(&args.cache_dir)?;
    let net = match &args.ip {
        _ if args.delivered => guest::GuestNet::Delivered,
        ip => guest::GuestNet::Static(ip),
    };
    let qemu_args = guest::qemu_args(&ensured.image, net, &args.serial, &args.tag)?;
    if json {
        print_json(&serde_json::json!({
            "image": ensured.image,
            "built": ensured.built,
            "args": qemu_args,
        }))?;
    } else {
        let words: Vec<String> = qemu_args
            .iter()
            .map(|a| macvtapctl::qemu::shell_quote(a))
            .collect();
        println!("{}", words.join(" "));
    }
    Ok(())
}
