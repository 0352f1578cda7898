//! The command line: the lab's options, and `guest`, which prints the QEMU
//! arguments that boot the lab's guest.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use macvtap_net::MacAddr;
use macvtapctl::cli::parse_mac;

/// Boot a VM on a CNI-made macvtap in private namespaces and reach it.
///
/// The whole story, end to end, in network namespaces the lab makes and
/// removes: a LAN, a node with the uplink veth `up0`, and an empty pod.
/// When `macvtap-deviceplugin` is next to macvtap-lab it runs inside the
/// node against a built-in kubelet stand-in, which registers it, sees its
/// devices Healthy and Allocates one; the `macvtap` CNI plugin then
/// attaches that deviceID to the pod exactly as Multus would, so the pod
/// gets the macvtap `net1` with the promised ifindex and the MAC from
/// CNI_ARGS (without the device plugin: the CNI plugin in standalone mode).
/// A small Debian guest boots with QEMU on the device node the device
/// plugin promised (built once from Debian packages and cached); the LAN
/// proves ping, TCP and HTTP; the timings are printed; everything made is
/// removed, also on failure or Ctrl-C. Needs root.
///
///   LAN 10.201.0.1 (lan0) ── veth ── up0 (node) ══ macvtap net1 (pod) ══ VM 10.201.0.10
///
/// Examples:
///   macvtap-lab
///   macvtap-lab --vm never        # no QEMU: a stand-in answers ping
///   macvtap-lab --vmm libvirt     # libvirt in the pod, as virt-launcher (libvirt-session: uid 107)
///   macvtap-lab --device-plugin never   # the CNI plugin alone, standalone mode
///   macvtap-lab --keep            # leave it running; prints how to remove it
///   macvtap-lab guest --ip 192.0.2.10/24 --serial stdio   # the guest's QEMU arguments
#[derive(Debug, Parser)]
#[command(
    name = "macvtap-lab",
    version = macvtap_buildinfo::VERSION,
    verbatim_doc_comment,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub lab: LabArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Guest(GuestArgs),
}

/// Whether the lab boots a real VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VmChoice {
    /// A real VM when QEMU is installed, else a stand-in that answers ARP and ping.
    Auto,
    /// A real VM, or fail.
    Always,
    /// The stand-in only (no QEMU needed).
    Never,
}

/// Whether the lab runs the device plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DevicePluginChoice {
    /// When `macvtap-deviceplugin` is found next to macvtap-lab; else the CNI
    /// plugin runs in standalone mode.
    Auto,
    /// The device plugin, or fail.
    Always,
    /// The CNI plugin in standalone mode (on `up0`), no device plugin.
    Never,
}

/// What runs the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VmmChoice {
    /// QEMU started by the lab on the tap the device plugin promised.
    Qemu,
    /// A private libvirtd as root (`qemu:///system`) in the pod's network
    /// namespace and a mount namespace whose /dev/tap<ifindex> is mapped
    /// as the kubelet maps the device plugin's node, as virt-launcher runs
    /// it; needs the device plugin.
    Libvirt,
    /// The same with libvirtd and QEMU as uid 107 (`qemu:///session`), as
    /// KubeVirt runs them.
    LibvirtSession,
}

/// The lab's options (what `macvtap-lab` does without a subcommand).
#[derive(Debug, Args)]
pub struct LabArgs {
    #[arg(long, value_enum, default_value = "auto")]
    pub vm: VmChoice,
    /// What runs the VM: QEMU directly, or libvirt as virt-launcher runs it.
    #[arg(long, value_enum, default_value = "qemu")]
    pub vmm: VmmChoice,
    /// Run the device plugin and attach its deviceID (auto: when
    /// `macvtap-deviceplugin` is next to macvtap-lab).
    #[arg(long, value_enum, default_value = "auto")]
    pub device_plugin: DevicePluginChoice,
    /// The device plugin binary (default: `macvtap-deviceplugin` next to
    /// macvtap-lab).
    #[arg(long, value_name = "PATH")]
    pub device_plugin_bin: Option<PathBuf>,
    /// Leave the namespaces (and the VM) in place on success or failure.
    #[arg(long)]
    pub keep: bool,
    /// The CNI plugin binary (default: `macvtap` next to macvtap-lab, then
    /// /opt/cni/bin/macvtap).
    #[arg(long, value_name = "PATH")]
    pub cni_plugin: Option<PathBuf>,
    /// The QEMU binary.
    #[arg(
        long = "qemu",
        default_value = "qemu-system-x86_64",
        value_name = "BIN"
    )]
    pub qemu_bin: PathBuf,
    /// Where the guest kernel and initramfs are cached.
    #[arg(long, default_value = DEFAULT_CACHE_DIR, value_name = "DIR")]
    pub cache_dir: PathBuf,
    /// Boot the guest with this MAC instead of the macvtap's (to watch the
    /// silent loss that a mismatch causes, and doctor explain it).
    #[arg(long, value_parser = parse_mac, value_name = "MAC")]
    pub guest_mac: Option<MacAddr>,
    /// How long to wait for the guest's first ping reply, in seconds.
    #[arg(long, default_value_t = 90, value_name = "SECONDS")]
    pub timeout: u64,
}

/// Where `lab` and `guest` cache the guest kernel and initramfs.
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/macvtapctl";

/// Print the QEMU arguments that boot the lab's small guest.
///
/// A Debian kernel and a busybox initramfs (built from Debian packages on
/// first use, cached) that configures --ip on its virtio NIC (or, with
/// --delivered, takes its address from the kernel's ip=, a NoCloud seed or
/// DHCP) and answers ping, TCP echo on port 7 and HTTP on port 80. Needs
/// `apt-get download`, busybox-static and xz. The words are shell-quoted:
/// use eval.
///
/// Examples:
///   eval "macvtapctl qemu --interface mvtap0 -- $(macvtap-lab guest --ip 192.0.2.10/24 --serial stdio)"
///   eval "macvtapctl handover --pid 1234 -- $(macvtap-lab guest --delivered --serial stdio)"
///   macvtap-lab guest --json
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct GuestArgs {
    /// The guest's address with prefix length.
    #[arg(long, default_value = "10.201.0.10/24", value_name = "CIDR")]
    pub ip: String,
    /// No address word: the guest takes its identity from the kernel's
    /// ip=, a NoCloud seed (a cidata disk) or DHCP, in that order, as
    /// `macvtapctl handover --deliver cmdline|nocloud|dhcp` gives it.
    #[arg(long, conflicts_with = "ip")]
    pub delivered: bool,
    /// QEMU's -serial backend for the guest console (file:PATH, stdio, null).
    #[arg(long, default_value = "null", value_name = "BACKEND")]
    pub serial: String,
    /// A word the guest serves in its HTTP page and console banner.
    #[arg(long, default_value = "hello", value_name = "WORD")]
    pub tag: String,
    #[arg(long, default_value = DEFAULT_CACHE_DIR, value_name = "DIR")]
    pub cache_dir: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_lab_runs_without_a_subcommand_and_guest_is_one() {
        let cli = Cli::try_parse_from(["macvtap-lab", "--vm", "never", "--json"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.lab.vm, VmChoice::Never);
        assert!(cli.json);
        assert_eq!(cli.lab.vmm, VmmChoice::Qemu);
        let cli = Cli::try_parse_from(["macvtap-lab", "--vmm", "libvirt-session"]).unwrap();
        assert_eq!(cli.lab.vmm, VmmChoice::LibvirtSession);
        let cli = Cli::try_parse_from(["macvtap-lab", "guest", "--tag", "t"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Guest(g)) if g.tag == "t"));
    }
}
