//! `libvirt-xml`: an `<interface>` element for libvirt's domain XML.

use macvtap_net::{MacAddr, MacvtapMode};

use crate::cli::LibvirtArgs;
use crate::scope::{Scope, ScopeError};

#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    #[error(transparent)]
    Scope(#[from] ScopeError),
    #[error("{0} has no MAC address")]
    NoMac(String),
    #[error(
        "libvirt's direct interfaces have no source mode; create the macvtap with \
         `macvtapctl create --mode source ...` and use --interface NAME"
    )]
    SourceMode,
    #[error("--queues must be 1 or more")]
    NoQueues,
}

pub fn run(scope: &Scope, args: &LibvirtArgs) -> Result<String, LibvirtError> {
    if args.queues == Some(0) {
        return Err(LibvirtError::NoQueues);
    }
    if let Some(name) = &args.interface {
        let mut nl = scope.netlink()?;
        let link = scope.macvtap(&mut nl, name)?;
        let mac = link.mac.ok_or_else(|| LibvirtError::NoMac(name.clone()))?;
        return Ok(ethernet(name, mac, args.queues));
    }
    // clap requires --lower when --interface is absent.
    let lower = args.lower.as_deref().unwrap_or_default();
    let mode = args.mode.unwrap_or(MacvtapMode::Bridge);
    direct(lower, mode, args.mac, args.queues)
}

/// KubeVirt's form: libvirt opens the existing macvtap's /dev/tap<ifindex>.
pub fn ethernet(interface: &str, mac: MacAddr, queues: Option<u32>) -> String {
    format!(
        "<interface type='ethernet'>\n  \
           <mac address='{mac}'/>\n  \
           <target dev='{dev}' managed='no'/>\n  \
           <model type='virtio'/>\n\
         {driver}</interface>\n",
        dev = escape(interface),
        driver = driver(queues),
    )
}

/// libvirt makes the macvtap itself on `lower`.
pub fn direct(
    lower: &str,
    mode: MacvtapMode,
    mac: Option<MacAddr>,
    queues: Option<u32>,
) -> Result<String, LibvirtError> {
    let mode = match mode {
        MacvtapMode::Bridge => "bridge",
        MacvtapMode::Vepa => "vepa",
        MacvtapMode::Private => "private",
        MacvtapMode::Passthru => "passthrough",
        MacvtapMode::Source => return Err(LibvirtError::SourceMode),
    };
    let mac = mac
        .map(|m| format!("  <mac address='{m}'/>\n"))
        .unwrap_or_default();
    Ok(format!(
        "<interface type='direct'>\n\
         {mac}  <source dev='{dev}' mode='{mode}'/>\n  \
           <model type='virtio'/>\n\
         {driver}</interface>\n",
        dev = escape(lower),
        driver = driver(queues),
    ))
}

/// Queues only: naming the vhost backend makes libvirt refuse the domain
/// under KVM when the host has no vhost-net; without a name libvirt uses
/// vhost when it can and QEMU's own backend otherwise.
fn driver(queues: Option<u32>) -> String {
    match queues {
        Some(n) if n > 1 => format!("  <driver queues='{n}'/>\n"),
        _ => String::new(),
    }
}

/// Escape text for an XML attribute value.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_attribute_text() {
        assert_eq!(escape("a&b<'>\""), "a&amp;b&lt;&apos;&gt;&quot;");
    }

    #[test]
    fn passthru_is_spelled_the_libvirt_way_and_source_is_refused() {
        let xml = direct("eth0", MacvtapMode::Passthru, None, None).unwrap();
        assert!(xml.contains("mode='passthrough'"), "{xml}");
        assert!(!xml.contains("<mac"), "{xml}");
        assert!(matches!(
            direct("eth0", MacvtapMode::Source, None, None),
            Err(LibvirtError::SourceMode)
        ));
    }

    #[test]
    fn multiqueue_adds_a_driver_element() {
        let mac = MacAddr::parse_unicast("02:00:00:00:00:01").unwrap();
        assert!(ethernet("mv0", mac, Some(4)).contains("<driver queues='4'/>"));
        assert!(!ethernet("mv0", mac, Some(4)).contains("vhost"));
        assert!(!ethernet("mv0", mac, Some(1)).contains("<driver"));
    }
}
