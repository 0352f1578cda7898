//! The host's links as the daemon sees them, kept current from netlink
//! link events on a thread of its own (the daemon never changes namespace).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use macvtap_net::{events_lost, Link, LinkEvent, LinkMonitor, Netlink, SysfsView};
use tokio::sync::watch;

use crate::config::LinkKind;

/// One host link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLink {
    pub index: u32,
    pub name: String,
    pub kind: Option<LinkKind>,
    pub info_kind: Option<String>,
    pub carrier: bool,
    pub enslaved: bool,
    /// The lower device's ifindex, for macvlan/macvtap links.
    pub lower_index: Option<u32>,
    /// NUMA node of the device behind the link, when sysfs knows it.
    pub numa_node: Option<i64>,
}

/// All host links, by ifindex.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkTable {
    links: BTreeMap<u32, HostLink>,
}

impl LinkTable {
    /// A table of these links.
    pub fn from_links(links: impl IntoIterator<Item = HostLink>) -> LinkTable {
        LinkTable {
            links: links.into_iter().map(|l| (l.index, l)).collect(),
        }
    }

    pub fn by_name(&self, name: &str) -> Option<&HostLink> {
        self.links.values().find(|l| l.name == name)
    }

    pub fn by_index(&self, index: u32) -> Option<&HostLink> {
        self.links.get(&index)
    }

    pub fn iter(&self) -> impl Iterator<Item = &HostLink> {
        self.links.values()
    }
}

/// What makes a [`HostLink`] out of a kernel [`Link`]: sysfs tells whether
/// a device backs it and on which NUMA node.
struct Describer {
    sysfs: Option<SysfsView>,
}

impl Describer {
    fn describe(&self, link: Link) -> HostLink {
        let (has_device, numa_node) = match &self.sysfs {
            Some(view) => (
                view.exists(&format!("class/net/{}/device", link.name)),
                view.read(&format!("class/net/{}/device/numa_node", link.name))
                    .ok()
                    .and_then(|s| s.trim().parse::<i64>().ok())
                    .filter(|n| *n >= 0),
            ),
            None => (false, None),
        };
        HostLink {
            index: link.index,
            kind: LinkKind::from_info_kind(link.kind.as_deref(), has_device),
            info_kind: link.kind,
            carrier: link.up && link.carrier,
            enslaved: link.controller.is_some(),
            lower_index: link.lower_index,
            numa_node,
            name: link.name,
        }
    }

    fn dump(&self) -> macvtap_net::Result<LinkTable> {
        let links = Netlink::open()?.links()?;
        Ok(LinkTable {
            links: links
                .into_iter()
                .map(|l| (l.index, self.describe(l)))
                .collect(),
        })
    }
}

/// Start following the host's links. Returns once the first full list is in.
pub fn watch_links() -> macvtap_net::Result<watch::Receiver<Arc<LinkTable>>> {
    // Subscribe before listing, so no change falls between the two.
    let mut monitor = LinkMonitor::open()?;
    let describer = Describer {
        sysfs: SysfsView::here().ok(),
    };
    let mut table = describer.dump()?;
    let (tx, rx) = watch::channel(Arc::new(table.clone()));
    std::thread::Builder::new()
        .name("link-events".into())
        .spawn(move || loop {
            let before = table.clone();
            match monitor.next_events() {
                Ok(events) => {
                    for event in events {
                        match event {
                            LinkEvent::Changed(link) => {
                                table.links.insert(link.index, describer.describe(link));
                            }
                            LinkEvent::Removed(link) => {
                                table.links.remove(&link.index);
                            }
                        }
                    }
                }
                Err(e) if events_lost(&e) => {
                    tracing::warn!("link events were lost; listing links again");
                    match describer.dump() {
                        Ok(t) => table = t,
                        Err(e) => {
                            tracing::error!("listing links: {}", macvtap_net::error_chain(&e))
                        }
                    }
                }
                Err(e) => {
                    tracing::error!("reading link events: {}", macvtap_net::error_chain(&e));
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            if tx.is_closed() {
                return;
            }
            if table != before {
                tx.send_replace(Arc::new(table.clone()));
            }
        })
        .map_err(|e| macvtap_net::Error::Thread(e.to_string()))?;
    Ok(rx)
}
