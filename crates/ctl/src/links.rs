//! `create`, `list`, `show` and `delete`: macvtaps in one namespace.

use macvtap_net::{MacvtapMode, MacvtapSpec};

use crate::cli::CreateArgs;
use crate::iface::InterfaceInfo;
use crate::scope::{Scope, ScopeError};

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Scope(#[from] ScopeError),
    #[error("{0:?} is not a usable interface name (1 to 15 characters, no '/', ':' or spaces)")]
    BadName(String),
    #[error("MTU {0} is out of range (68..=65535)")]
    BadMtu(u32),
    #[error("source mode needs at least one --source-mac (the MACs allowed to send)")]
    SourceMacsMissing,
    #[error("--source-mac only applies to --mode source (this is {0})")]
    SourceMacsUnexpected(MacvtapMode),
    #[error("an interface named {name:?} already exists in {label}")]
    NameTaken { name: String, label: String },
    #[error("cannot create macvtap {name}{hint}")]
    Create {
        name: String,
        #[source]
        source: macvtap_net::Error,
        hint: String,
    },
    #[error("cannot delete {name}")]
    Delete {
        name: String,
        #[source]
        source: macvtap_net::Error,
    },
}

/// Kernel names: at most IFNAMSIZ-1 bytes, no separators the kernel refuses.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name.contains(['/', ':', ' ', '\t', '\n', '\0'])
}

pub fn create(scope: &Scope, args: &CreateArgs) -> Result<InterfaceInfo, LinkError> {
    if !valid_ifname(&args.name) {
        return Err(LinkError::BadName(args.name.clone()));
    }
    if let Some(mtu) = args.mtu {
        if !(68..=65535).contains(&mtu) {
            return Err(LinkError::BadMtu(mtu));
        }
    }
    match (args.mode, args.source_macs.is_empty()) {
        (MacvtapMode::Source, true) => return Err(LinkError::SourceMacsMissing),
        (mode, false) if mode != MacvtapMode::Source => {
            return Err(LinkError::SourceMacsUnexpected(mode))
        }
        _ => {}
    }
    let mut nl = scope.netlink()?;
    let lower = scope.link(&mut nl, &args.lower)?;
    if nl
        .link_by_name(&args.name)
        .map_err(ScopeError::from)?
        .is_some()
    {
        return Err(LinkError::NameTaken {
            name: args.name.clone(),
            label: scope.label().into(),
        });
    }
    let spec = MacvtapSpec {
        name: &args.name,
        lower_index: lower.index,
        mode: args.mode,
        source_macs: &args.source_macs,
        mac: args.mac,
        mtu: args.mtu,
        promisc: false,
        up: true,
        ifindex: args.ifindex,
        netns_fd: None,
    };
    nl.create_macvtap(&spec)
        .map_err(|source| LinkError::Create {
            name: args.name.clone(),
            hint: create_hint(&source, args),
            source,
        })?;
    let mut link = scope.macvtap(&mut nl, &args.name)?;
    // passthru inherits the lower device's MAC at creation, whatever was
    // asked; setting it afterwards gives both the requested MAC.
    if let Some(mac) = args.mac.filter(|m| link.mac != Some(*m)) {
        nl.configure_link(link.index, Some(mac), None, None, None)
            .map_err(|source| LinkError::Create {
                name: args.name.clone(),
                hint: format!(" (setting MAC {mac} after creation)"),
                source,
            })?;
        link = scope.macvtap(&mut nl, &args.name)?;
    }
    Ok(InterfaceInfo::gather(&link, &mut nl, &scope.sysfs()?))
}

/// The likely reason behind a kernel refusal, in the user's terms.
fn create_hint(e: &macvtap_net::Error, args: &CreateArgs) -> String {
    match e.errno() {
        Some(libc::EEXIST) if args.ifindex.is_some() => format!(
            " (ifindex {} is taken in this namespace)",
            args.ifindex.unwrap_or_default()
        ),
        Some(libc::EINVAL) if args.mode == MacvtapMode::Passthru => {
            " (a passthru macvtap must be the only macvlan/macvtap on its lower device)".into()
        }
        Some(libc::EINVAL) => format!(
            " (the lower device {} may not accept macvtaps, or already carries a passthru one)",
            args.lower
        ),
        Some(libc::EADDRINUSE) => {
            " (another macvtap/macvlan on this lower device has that MAC)".into()
        }
        Some(libc::EPERM) => " (run as root)".into(),
        _ => String::new(),
    }
}

/// Every macvtap in the namespace, by ifindex.
pub fn list(scope: &Scope) -> Result<Vec<InterfaceInfo>, LinkError> {
    let mut nl = scope.netlink()?;
    let sysfs = scope.sysfs()?;
    let mut links = nl.links().map_err(ScopeError::from)?;
    links.retain(|l| l.kind.as_deref() == Some("macvtap"));
    links.sort_by_key(|l| l.index);
    Ok(links
        .iter()
        .map(|l| InterfaceInfo::gather(l, &mut nl, &sysfs))
        .collect())
}

pub fn list_text(items: &[InterfaceInfo], scope: &Scope) -> String {
    if items.is_empty() {
        return format!("no macvtaps in {}\n", scope.label());
    }
    let mut out = format!(
        "{:<15} {:>7} {:<8} {:<16} {:<17} {:>5} {:<5} {:<9} {}\n",
        "NAME", "IFINDEX", "MODE", "LOWER", "MAC", "MTU", "STATE", "DEVICE", "SAFE NODE"
    );
    for i in items {
        let lower = i.lower.clone().unwrap_or_else(|| match i.lower_ifindex {
            Some(idx) if i.lower_netnsid.is_some() => format!("#{idx} (other ns)"),
            Some(idx) => format!("#{idx}"),
            None => "?".into(),
        });
        out.push_str(&format!(
            "{:<15} {:>7} {:<8} {:<16} {:<17} {:>5} {:<5} {:<9} {}\n",
            i.name,
            i.ifindex,
            i.mode.as_deref().unwrap_or("?"),
            lower,
            i.mac.as_deref().unwrap_or("?"),
            i.mtu,
            i.state,
            i.device.as_deref().unwrap_or("?"),
            i.device_node.as_deref().unwrap_or("none (see show)"),
        ));
    }
    out
}

pub fn show(scope: &Scope, name: &str) -> Result<InterfaceInfo, LinkError> {
    let mut nl = scope.netlink()?;
    let link = scope.macvtap(&mut nl, name)?;
    Ok(InterfaceInfo::gather(&link, &mut nl, &scope.sysfs()?))
}

/// Delete a macvtap (refusing any other kind of link).
pub fn delete(scope: &Scope, name: &str) -> Result<(), LinkError> {
    let mut nl = scope.netlink()?;
    let link = scope.macvtap(&mut nl, name)?;
    nl.delete_link(link.index)
        .map_err(|source| LinkError::Delete {
            name: name.into(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_follow_the_kernel_rules() {
        for good in ["mvtap0", "a", "net1", "fifteen-chars15"] {
            assert!(valid_ifname(good), "{good}");
        }
        for bad in ["", ".", "..", "sixteen-chars-16", "a/b", "a:b", "a b"] {
            assert!(!valid_ifname(bad), "{bad}");
        }
    }
}
