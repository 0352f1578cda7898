//! `macvtapctl`: the host tool for wiring VMs to macvtaps by hand. Each
//! subcommand parses, calls its module, prints; see `macvtapctl --help`.

use std::process::ExitCode;

use clap::Parser;
use macvtapctl::cli::{Cli, Command};
use macvtapctl::scope::{Scope, ScopeError};
use macvtapctl::{doctor, handover, libvirt, links, qemu};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
enum CtlError {
    #[error(transparent)]
    Scope(#[from] ScopeError),
    #[error(transparent)]
    Link(#[from] links::LinkError),
    #[error(transparent)]
    Qemu(#[from] qemu::QemuError),
    #[error(transparent)]
    Libvirt(#[from] libvirt::LibvirtError),
    #[error(transparent)]
    Doctor(#[from] doctor::DoctorError),
    #[error(transparent)]
    Handover(#[from] handover::HandoverError),
    #[error("cannot encode JSON")]
    Json(#[from] serde_json::Error),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            macvtapctl::print_error("macvtapctl", &e);
            ExitCode::FAILURE
        }
    }
}

fn print_json(value: &impl Serialize) -> Result<(), CtlError> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn run(cli: &Cli) -> Result<ExitCode, CtlError> {
    let scope = || Scope::open(cli.netns.as_deref());
    match &cli.command {
        Command::Create(args) => {
            let info = links::create(&scope()?, args)?;
            if cli.json {
                print_json(&info)?;
            } else {
                print!("created {}", info.text());
            }
        }
        Command::List => {
            let scope = scope()?;
            let items = links::list(&scope)?;
            if cli.json {
                print_json(&items)?;
            } else {
                print!("{}", links::list_text(&items, &scope));
            }
        }
        Command::Show(args) => {
            let info = links::show(&scope()?, &args.name)?;
            if cli.json {
                print_json(&info)?;
            } else {
                print!("{}", info.text());
            }
        }
        Command::Delete(args) => {
            let scope = scope()?;
            links::delete(&scope, &args.name)?;
            if cli.json {
                print_json(&serde_json::json!({"deleted": args.name}))?;
            } else {
                println!("deleted {} in {}", args.name, scope.label());
            }
        }
        Command::Qemu(args) => qemu::run(&scope()?, args)?,
        Command::LibvirtXml(args) => print!("{}", libvirt::run(&scope()?, args)?),
        Command::Handover(args) => return Ok(handover::run(cli.netns.as_deref(), cli.json, args)?),
        Command::Doctor(args) => {
            let report = doctor::run(&scope()?, args)?;
            if cli.json {
                print_json(&report)?;
            } else {
                print!("{}", report.text());
            }
            if report.problems > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
