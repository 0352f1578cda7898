//! Which network namespace a command acts in (`--netns`), and the kernel
//! views opened inside it: an rtnetlink socket and a sysfs instance. Both
//! stay bound to that namespace, so they are used from the calling thread
//! afterwards; only their creation happens on a thread inside it.

use std::path::{Path, PathBuf};

use macvtap_net::{named_netns_path, Link, NetNs, Netlink, SysfsView};

#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    #[error("network namespace {name:?} does not exist ({path} is missing; `ip netns list` shows the names)")]
    NoSuchNamespace { name: String, path: PathBuf },
    #[error("cannot use network namespace {name:?}")]
    Namespace {
        name: String,
        #[source]
        source: macvtap_net::Error,
    },
    #[error(transparent)]
    Kernel(#[from] macvtap_net::Error),
    #[error("cannot mount a sysfs view of {label}")]
    Sysfs {
        label: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no interface {name:?} in {label}")]
    NoSuchInterface { name: String, label: String },
    #[error("{name} in {label} is a {kind}, not a macvtap; macvtapctl only touches macvtaps")]
    NotAMacvtap {
        name: String,
        label: String,
        kind: String,
    },
}

/// A network namespace to act in, opened once.
#[derive(Debug)]
pub struct Scope {
    ns: NetNs,
    /// `namespace "pod1"` or `this namespace`, for messages.
    label: String,
    /// The name given with `--netns`, if any.
    name: Option<String>,
}

impl Scope {
    /// `--netns NAME` (a name under /run/netns, or a path), or the calling
    /// thread's own namespace.
    pub fn open(netns: Option<&str>) -> Result<Scope, ScopeError> {
        let Some(name) = netns else {
            return Ok(Scope {
                ns: NetNs::current()?,
                label: "this namespace".into(),
                name: None,
            });
        };
        let path = if name.contains('/') {
            PathBuf::from(name)
        } else {
            named_netns_path(name).map_err(|source| ScopeError::Namespace {
                name: name.into(),
                source,
            })?
        };
        let ns = NetNs::open(&path).map_err(|source| match source {
            macvtap_net::Error::NetnsMissing(_) => ScopeError::NoSuchNamespace {
                name: name.into(),
                path: path.clone(),
            },
            source => ScopeError::Namespace {
                name: name.into(),
                source,
            },
        })?;
        Ok(Scope {
            ns,
            label: format!("namespace {name:?}"),
            name: Some(name.into()),
        })
    }

    /// Wrap an already open namespace (the lab's).
    pub fn from_netns(ns: NetNs, name: &str) -> Scope {
        Scope {
            ns,
            label: format!("namespace {name:?}"),
            name: Some(name.into()),
        }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    pub fn path(&self) -> &Path {
        self.ns.path()
    }

    pub fn netns(&self) -> &NetNs {
        &self.ns
    }

    /// An rtnetlink socket inside the namespace.
    pub fn netlink(&self) -> Result<Netlink, ScopeError> {
        Ok(self.ns.run(Netlink::open)??)
    }

    /// A sysfs instance showing the namespace's links.
    pub fn sysfs(&self) -> Result<SysfsView, ScopeError> {
        self.ns
            .run(SysfsView::here)?
            .map_err(|source| ScopeError::Sysfs {
                label: self.label.clone(),
                source,
            })
    }

    /// Run `f` on a thread inside the namespace (sockets it opens stay there).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, ScopeError> {
        Ok(self.ns.run(f)?)
    }

    /// The link `name`, which must exist.
    pub fn link(&self, nl: &mut Netlink, name: &str) -> Result<Link, ScopeError> {
        nl.link_by_name(name)?
            .ok_or_else(|| ScopeError::NoSuchInterface {
                name: name.into(),
                label: self.label.clone(),
            })
    }

    /// The macvtap `name`, refusing any other kind of link.
    pub fn macvtap(&self, nl: &mut Netlink, name: &str) -> Result<Link, ScopeError> {
        let link = self.link(nl, name)?;
        if link.kind.as_deref() != Some("macvtap") {
            return Err(ScopeError::NotAMacvtap {
                name: name.into(),
                label: self.label.clone(),
                kind: link.kind.unwrap_or_else(|| "device".into()),
            });
        }
        Ok(link)
    }
}
