//! Write macvtapctl's man pages (one per subcommand, `macvtapctl-create.1`,
//! ...) and its bash, zsh and fish completions, all generated from the CLI
//! definition the binary itself parses with, so they cannot drift from it.
//!
//!   cargo run -p macvtapctl --example gen-docs -- OUT_DIR
//!
//! writes OUT_DIR/man/man1/*.1 and OUT_DIR/completions/{macvtapctl.bash,_macvtapctl,macvtapctl.fish}.
//! `./scripts/build-release` runs it; `./scripts/build-deb` packages the result.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;
use macvtapctl::cli::Cli;

fn main() -> ExitCode {
    let Some(out) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: gen-docs OUT_DIR");
        return ExitCode::from(2);
    };
    match generate(&out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gen-docs: {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}

fn generate(out: &std::path::Path) -> std::io::Result<()> {
    let man = out.join("man/man1");
    let completions = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    let mut cmd = Cli::command();
    cmd.build();
    clap_mangen::generate_to(cmd.clone(), &man)?;
    // clap's built-in `help` subcommand gets pages too; they only repeat
    // the others.
    for entry in std::fs::read_dir(&man)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == "macvtapctl-help.1" || name.starts_with("macvtapctl-help-") {
            std::fs::remove_file(&path)?;
        }
    }
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "macvtapctl", &completions)?;
    }
    Ok(())
}
