//! The command line: every subcommand, its options and the help that
//! teaches them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use macvtap_net::{MacAddr, MacvtapMode};

/// Wire virtual machines to macvtaps by hand: create, inspect and delete
/// macvtaps, start QEMU on one, print libvirt XML and diagnose the classic
/// failures. (The lab that boots a real VM on a CNI-made macvtap is its own
/// tool: macvtap-lab.)
///
/// A macvtap is a macvlan child of a lower (uplink) device whose frames go
/// to a character device (/dev/tapN) that QEMU reads and writes, so a guest
/// sits directly on the uplink's LAN with its own MAC. Run as root.
///
/// Examples:
///   macvtapctl create --lower eth0 --name mvtap0 --mac 02:00:00:00:00:01
///   macvtapctl show mvtap0
///   macvtapctl qemu --interface mvtap0 -- -m 1G -drive file=disk.qcow2
///   macvtapctl doctor --interface mvtap0
///   macvtapctl --netns pod1 list --json # act inside /run/netns/pod1
///   macvtapctl handover --pid 4242 -- -m 512 -kernel vmlinux   # a VM takes over a container's IP
#[derive(Debug, Parser)]
#[command(
    name = "macvtapctl",
    version = macvtap_buildinfo::VERSION,
    verbatim_doc_comment
)]
pub struct Cli {
    /// Act inside this network namespace: a name from `ip netns list`
    /// (/run/netns/NAME) or a path such as /proc/PID/ns/net.
    #[arg(long, global = true, value_name = "NAME")]
    pub netns: Option<String>,
    /// Print machine-readable JSON instead of text (commands that report).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Create(CreateArgs),
    /// List the macvtaps in the namespace, with their tap devices.
    ///
    /// Examples:
    ///   macvtapctl list
    ///   macvtapctl --netns pod1 list --json
    #[command(verbatim_doc_comment)]
    List,
    /// Show one macvtap: mode, lower device, MAC, MTU, ifindex, state, the
    /// tap device number and a device node that is safe to open (if any).
    ///
    /// Examples:
    ///   macvtapctl show mvtap0
    ///   macvtapctl --netns pod1 show net1 --json
    #[command(verbatim_doc_comment)]
    Show(NameArg),
    /// Delete a macvtap (other kinds of links are refused).
    ///
    /// Example:
    ///   macvtapctl delete mvtap0
    #[command(verbatim_doc_comment)]
    Delete(NameArg),
    Qemu(QemuArgs),
    LibvirtXml(LibvirtArgs),
    Doctor(DoctorArgs),
    Handover(HandoverArgs),
}

/// Create a macvtap on a lower device, up, and show it.
///
/// Modes: bridge (guests on the same lower device talk to each other
/// directly; the default), vepa (all traffic goes out to the switch),
/// private (guests cannot talk to each other), passthru (one macvtap takes
/// over the lower device) and source (only frames from the --source-mac
/// addresses are accepted).
///
/// Examples:
///   macvtapctl create --lower eth0 --name mvtap0
///   macvtapctl create --lower eth0 --name mvtap1 --mode vepa --mac 02:00:00:00:00:02 --mtu 9000
///   macvtapctl create --lower eth0 --name mvtap2 --mode source \
///       --source-mac 02:00:00:00:00:10 --source-mac 02:00:00:00:00:11
///   macvtapctl create --lower eth0 --name mvtap3 --ifindex 4000   # promises /dev/tap4000
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct CreateArgs {
    /// The lower (uplink) device, in the same namespace.
    #[arg(long, value_name = "DEV")]
    pub lower: String,
    /// Name of the new macvtap (at most 15 characters).
    #[arg(long)]
    pub name: String,
    /// bridge, vepa, private, passthru or source.
    #[arg(long, value_parser = parse_mode, default_value = "bridge", value_name = "MODE")]
    pub mode: MacvtapMode,
    /// The macvtap's MAC; the guest must use the same one. Default: random
    /// (passthru: the lower device's, and a MAC given here becomes the
    /// lower device's too).
    #[arg(long, value_parser = parse_mac)]
    pub mac: Option<MacAddr>,
    /// Default: the lower device's.
    #[arg(long, value_name = "N")]
    pub mtu: Option<u32>,
    /// source mode: a MAC allowed to send through the macvtap (repeat it).
    #[arg(long = "source-mac", value_parser = parse_mac, value_name = "MAC")]
    pub source_macs: Vec<MacAddr>,
    /// Ask the kernel for this ifindex, so the device is /dev/tap<N>.
    #[arg(long, value_name = "N")]
    pub ifindex: Option<u32>,
}

#[derive(Debug, Args)]
pub struct NameArg {
    /// The macvtap's name.
    pub name: String,
}

/// Whether QEMU should use vhost-net for the tap queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VhostChoice {
    /// vhost-net when /dev/vhost-net can be opened, userspace virtio otherwise.
    Auto,
    /// vhost-net or fail.
    On,
    /// Userspace virtio.
    Off,
}

/// Start QEMU on a macvtap, with its tap device opened safely and its MAC.
///
/// The tap device is opened by the device number the kernel reports for
/// the interface (a private node made and removed again), never by the
/// /dev/tap<ifindex> name, which can belong to another namespace's macvtap.
/// It is opened once per queue. macvtapctl then adds
///   -netdev tap,id=mvtnet0,fd=N            (fds=N:M:... for several queues)
///   -device virtio-net-pci,netdev=mvtnet0,mac=<the macvtap's MAC>[,mq=on]
/// and `-accel kvm` or `-accel tcg` when you gave no accelerator, and
/// replaces itself with QEMU (the fds stay open in QEMU).
///
/// Examples:
///   macvtapctl qemu --interface mvtap0 -- -m 1G -drive file=disk.qcow2,if=virtio
///   macvtapctl qemu --interface mvtap0 --queues 4 -- -smp 4 -m 2G -cdrom debian.iso
///   macvtapctl --netns pod1 qemu --interface net1 --dry-run -- -m 512
///   eval "macvtapctl qemu --interface mvtap0 -- $(macvtap-lab guest --serial stdio)"  # the lab's guest
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct QemuArgs {
    /// The macvtap to attach the guest to.
    #[arg(long, value_name = "IF")]
    pub interface: String,
    /// Queues (opens of the tap device); more than 1 enables virtio multiqueue.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16), value_name = "N")]
    pub queues: u32,
    #[arg(long, value_enum, default_value = "auto")]
    pub vhost: VhostChoice,
    /// The QEMU binary.
    #[arg(
        long = "qemu",
        default_value = "qemu-system-x86_64",
        value_name = "BIN"
    )]
    pub qemu_bin: PathBuf,
    /// Extra virtio-net-pci property (repeat it), e.g. romfile= or bootindex=1.
    #[arg(long = "device-opt", value_name = "KEY=VALUE")]
    pub device_opts: Vec<String>,
    /// Print the QEMU command instead of running it.
    #[arg(long)]
    pub dry_run: bool,
    /// Arguments for QEMU, after `--`.
    #[arg(last = true, value_name = "QEMU_ARGS")]
    pub qemu_args: Vec<String>,
}

/// Print a libvirt <interface> element for a macvtap.
///
/// With --interface: libvirt uses an existing macvtap (KubeVirt's form):
///   <interface type='ethernet'> with <target dev='IF' managed='no'/> and the
///   macvtap's MAC; libvirt then opens /dev/tap<ifindex> itself (check it
///   with `macvtapctl doctor --interface IF`).
/// With --lower: libvirt creates the macvtap itself (<interface type='direct'>).
///
/// Examples:
///   macvtapctl libvirt-xml --interface mvtap0 > nic.xml && virsh attach-device vm1 nic.xml --config
///   macvtapctl libvirt-xml --lower eth0 --mode bridge --mac 02:00:00:00:00:05
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct LibvirtArgs {
    /// An existing macvtap.
    #[arg(long, value_name = "IF", conflicts_with_all = ["lower", "mode", "mac"], required_unless_present = "lower")]
    pub interface: Option<String>,
    /// The lower device libvirt should put a macvtap on.
    #[arg(long, value_name = "DEV")]
    pub lower: Option<String>,
    /// Mode of the macvtap libvirt creates (bridge, vepa, private, passthru).
    #[arg(long, value_parser = parse_mode, value_name = "MODE")]
    pub mode: Option<MacvtapMode>,
    /// The guest's MAC (default: libvirt picks one).
    #[arg(long, value_parser = parse_mac)]
    pub mac: Option<MacAddr>,
    /// virtio queues (<driver queues='N'/>).
    #[arg(long, value_name = "N")]
    pub queues: Option<u32>,
}

/// Find the classic macvtap failures and say how to fix each.
///
/// Checks: /dev not mounted or the tap node missing (QEMU: "TUNGETIFF
/// ioctl() failed: Inappropriate ioctl for device"), KVM missing, disabled
/// or denied, a guest MAC that differs from the macvtap's (silent 100%
/// loss), the guest using an IP the pod already has, the host unable to
/// reach its guests in bridge mode, a lower device down or without carrier,
/// and /dev/tap<ifindex> belonging to another namespace's macvtap; and a
/// `macvtapctl handover` half done (a record whose apply never finished, or
/// whose supervisor is gone), with the `handover --undo` that fixes it.
///
/// The guest MAC is taken from --guest-mac or from the command line of the
/// QEMU process that holds the tap device. Exit status 1 when a problem is
/// found, 0 when clean (notes do not count).
///
/// Examples:
///   macvtapctl doctor
///   macvtapctl doctor --interface mvtap0 --guest-mac 52:54:00:12:34:56
///   macvtapctl --netns pod1 doctor --interface net1 --guest-ip 10.0.0.5 --json
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct DoctorArgs {
    /// The macvtap to check (default: every macvtap in the namespace).
    #[arg(long, value_name = "IF")]
    pub interface: Option<String>,
    /// The MAC the guest's NIC uses.
    #[arg(long, value_parser = parse_mac, value_name = "MAC")]
    pub guest_mac: Option<MacAddr>,
    /// The IPv4/IPv6 address the guest uses.
    #[arg(long, value_name = "IP")]
    pub guest_ip: Option<std::net::IpAddr>,
    /// Where `macvtapctl handover` keeps its records (checked for a
    /// handover half done).
    #[arg(long, default_value = macvtap_state::DEFAULT_STATE_DIR, value_name = "DIR")]
    pub state_dir: String,
}

/// How the guest learns the identity it takes over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Deliver {
    /// A DHCPv4 server that answers only the guest's MAC, run by this
    /// process on a shim macvlan next to the macvtap.
    Dhcp,
    /// A cloud-init NoCloud seed image (vfat, label cidata), attached read-only.
    Nocloud,
    /// The kernel's ip= argument, added to your -append (direct-kernel boots).
    Cmdline,
}

/// Hand a container's network identity over to a VM, run the VM, give it back.
///
/// The container is named by --netns NAME|PATH (the global option: a name
/// from `ip netns list` or a path such as /proc/PID/ns/net) or by --pid PID.
/// macvtapctl then
///   1. captures the addresses, routes, MTU (and DNS) of --interface and
///      writes them to a durable record under --state-dir, before changing
///      anything;
///   2. makes a bridge-mode macvtap on that interface with --mac (or a
///      generated MAC) and takes the addresses and routes off the interface;
///   3. starts QEMU on the macvtap as `macvtapctl qemu` does (the tap opened
///      by its device number, the NIC's MAC = the macvtap's), delivering the
///      identity by --deliver, and stays as QEMU's supervising parent;
///   4. when QEMU exits, or on Ctrl-C/SIGTERM/SIGHUP (forwarded to QEMU first),
///      stops the DHCP server and undoes everything from the record.
///
/// From then on the VM answers at the container's address. QEMU runs in
/// macvtapctl's own namespace; only its tap fd is the container's.
///
/// If the supervisor is killed (SIGKILL, a crash), the record stays:
/// `macvtapctl handover --undo` with the same --netns/--pid and --interface
/// restores the container from the record alone; `macvtapctl doctor
/// --state-dir DIR` reports such a half-done handover.
///
/// --libvirt prints the libvirt pieces instead of starting QEMU (an
/// <interface type='ethernet'> on the macvtap with its MAC, the seed disk for
/// nocloud, the <cmdline> for cmdline) and leaves the handover applied; end it
/// with --undo. libvirt must run in the container's namespace (it opens
/// /dev/tap<ifindex> there). With --deliver dhcp and --libvirt, macvtapctl
/// stays in the foreground as the DHCP server until Ctrl-C/SIGTERM, which stops
/// the server and leaves the handover applied (the lease is infinite).
///
/// A handover the chained CNI plugin made ("handover": true) is adopted
/// instead: steps 1 and 2 are its ADD's, macvtapctl delivers and starts QEMU
/// from its record, and when QEMU exits leaves it applied: the runtime's CNI
/// DEL undoes it (--undo refuses it). --adopt refuses to apply a handover of
/// its own when there is no such record.
///
/// --json prints one JSON object per line on stdout: `{"event":"applied",...}`
/// when the handover is done (and QEMU started), `{"event":"undone",...}` at
/// the end (`{"event":"stopped","outcome":"LeftToCni",...}` when adopted).
///
/// Examples:
///   macvtapctl handover --pid 4242 -- -m 512 -nographic -drive file=vm.qcow2,if=virtio
///   macvtapctl --netns ctr1 handover --deliver cmdline -- \
///       -kernel vmlinux -initrd initrd.img -append "console=ttyS0" -nographic
///   macvtapctl handover --pid 4242 --deliver nocloud --mac 02:00:00:00:00:05 -- -m 1G -drive file=cloud.qcow2,if=virtio
///   macvtapctl handover --pid 4242 --deliver nocloud --libvirt > pieces.xml
///   macvtapctl handover --undo --pid 4242          # after a SIGKILL, or to end a --libvirt handover
///   macvtapctl --netns /run/netns/cni-1234 handover --adopt -- -m 512 -drive file=vm.qcow2,if=virtio
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct HandoverArgs {
    /// The container's process (its /proc/PID/ns/net); or use --netns.
    #[arg(long, value_name = "PID")]
    pub pid: Option<i32>,
    /// The container interface whose identity the VM takes over.
    #[arg(long, default_value = "eth0", value_name = "IF")]
    pub interface: String,
    #[arg(long, value_enum, default_value = "dhcp")]
    pub deliver: Deliver,
    /// The guest's (and macvtap's) MAC; default: a generated local unicast MAC.
    #[arg(long, value_parser = parse_mac)]
    pub mac: Option<MacAddr>,
    /// Where the handover records live.
    #[arg(long, default_value = macvtap_state::DEFAULT_STATE_DIR, value_name = "DIR")]
    pub state_dir: String,
    /// resolv.conf whose name servers and search domains are handed over.
    /// Default: with --pid the container's /etc/resolv.conf; with --netns NAME
    /// /etc/netns/NAME/resolv.conf if it exists; otherwise none.
    #[arg(long, value_name = "PATH")]
    pub resolv_conf: Option<PathBuf>,
    /// The guest's host name (DHCP option 12, NoCloud local-hostname, ip=).
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// --deliver nocloud: where to write the seed image (default: next to
    /// the record, removed by undo).
    #[arg(long, value_name = "PATH")]
    pub seed: Option<PathBuf>,
    /// The QEMU binary.
    #[arg(
        long = "qemu",
        default_value = "qemu-system-x86_64",
        value_name = "BIN"
    )]
    pub qemu_bin: PathBuf,
    /// Extra virtio-net-pci property (repeat it), e.g. romfile=.
    #[arg(long = "device-opt", value_name = "KEY=VALUE")]
    pub device_opts: Vec<String>,
    /// Print libvirt domain pieces instead of running QEMU; the handover stays.
    #[arg(long, conflicts_with = "undo")]
    pub libvirt: bool,
    /// Undo a handover from its record (a killed supervisor, a --libvirt handover).
    #[arg(long)]
    pub undo: bool,
    /// Run on the handover the chained CNI plugin made (`"handover": true`),
    /// and refuse to apply one of its own. Without it that handover is
    /// adopted anyway when its record exists. An adopted handover stays
    /// applied when QEMU exits: the runtime's CNI DEL undoes it.
    #[arg(long, conflicts_with = "undo")]
    pub adopt: bool,
    /// Arguments for QEMU, after `--`.
    #[arg(last = true, value_name = "QEMU_ARGS")]
    pub qemu_args: Vec<String>,
}

fn parse_mode(s: &str) -> Result<MacvtapMode, String> {
    s.parse()
}

pub fn parse_mac(s: &str) -> Result<MacAddr, String> {
    MacAddr::parse_unicast(s).map_err(|e| e.to_string())
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
    fn qemu_takes_everything_after_the_double_dash() {
        let cli = Cli::try_parse_from([
            "macvtapctl",
            "qemu",
            "--interface",
            "mv0",
            "--queues",
            "2",
            "--",
            "-m",
            "512",
            "--queues",
        ])
        .unwrap();
        let Command::Qemu(q) = cli.command else {
            panic!("not qemu")
        };
        assert_eq!(q.queues, 2);
        assert_eq!(q.qemu_args, ["-m", "512", "--queues"]);
    }

    /// The error clap prints for `create` with these extra arguments.
    fn create_error(extra: &[&str]) -> String {
        let mut argv = vec!["macvtapctl", "create", "--lower", "e", "--name", "n"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap_err().to_string()
    }

    #[test]
    fn bad_modes_and_macs_are_refused_with_the_reason() {
        let err = create_error(&["--mode", "hub"]);
        assert!(err.contains("unknown macvtap mode"), "{err}");
        let err = create_error(&["--mac", "01:00:5e:00:00:01"]);
        assert!(err.contains("multicast"), "{err}");
    }

    #[test]
    fn netns_and_json_go_anywhere() {
        let cli = Cli::try_parse_from(["macvtapctl", "list", "--netns", "pod1", "--json"]).unwrap();
        assert_eq!(cli.netns.as_deref(), Some("pod1"));
        assert!(cli.json);
    }
}
