//! `macvtap`: the CNI plugin binary. Reads the network configuration on
//! stdin and the `CNI_*` environment, prints a result or an error as JSON on
//! stdout; nothing else goes to stdout.

use std::io::{Read, Write};
use std::process::ExitCode;

use macvtap_cni::error::{code, escape_controls};
use macvtap_cni::spec::Env;
use macvtap_cni::{run, CniError};

const HELP: &str = "\
macvtap: a CNI plugin that gives a pod a macvtap interface on a host uplink.

It is run by a container runtime or Multus, not by hand: the network
configuration comes on stdin and the command in CNI_COMMAND (ADD, DEL, CHECK,
VERSION, STATUS, GC), with CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS
and CNI_PATH. See docs/cni-plugin.md for the configuration keys.
`macvtap --version` names this build and the CNI versions it speaks.

Try:  echo '{\"cniVersion\":\"1.1.0\"}' | CNI_COMMAND=VERSION macvtap
";

fn main() -> ExitCode {
    let env = Env::from_process();
    if env.command.is_empty() {
        if std::env::args().any(|a| a == "--help" || a == "-h") {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        if std::env::args().any(|a| a == "--version" || a == "-V") {
            println!(
                "macvtap {}\nCNI versions: {}",
                macvtap_buildinfo::VERSION,
                macvtap_cni::spec::SUPPORTED_VERSIONS.join(", ")
            );
            return ExitCode::SUCCESS;
        }
    }
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => run(&env, &stdin),
        Err(e) => macvtap_cni::Outcome {
            version: "1.1.0".into(),
            result: Err(CniError::new(
                code::IO_FAILURE,
                format!("cannot read the configuration from stdin: {e}"),
            )),
        },
    };
    let mut out = std::io::stdout().lock();
    match outcome.result {
        Ok(Some(value)) => {
            let _ = writeln!(out, "{value}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            // Any input may carry control characters: none reaches the log raw.
            eprintln!(
                "macvtap: {} {}: {e}",
                escape_controls(&env.command),
                escape_controls(&env.container_id)
            );
            let _ = writeln!(out, "{}", e.to_json(&outcome.version));
            ExitCode::FAILURE
        }
    }
}
