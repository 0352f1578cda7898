//! Delivery by the kernel's own `ip=` argument, for direct-kernel boots
//! (`qemu -kernel ... -append "..."`): the guest kernel configures the
//! interface before init runs (it needs `CONFIG_IP_PNP`).
//!
//! The form is the kernel's (Documentation/admin-guide/nfs/nfsroot.rst):
//! `ip=<client-ip>:<server-ip>:<gw-ip>:<netmask>:<hostname>:<device>:<autoconf>:<dns0-ip>:<dns1-ip>`,
//! here with no server and autoconf `off`. IPv4 only: the kernel has no
//! IPv6 form.

use std::net::IpAddr;

use crate::error::{Error, Result};
use crate::identity::{netmask, Identity};

/// The guest side of an `ip=` argument.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelIpOptions {
    /// The guest's host name (empty: none).
    pub hostname: Option<String>,
    /// The guest's interface (`eth0` if None).
    pub device: Option<String>,
}

fn field(what: &str, value: &str) -> Result<()> {
    if value.len() > 64
        || value
            .chars()
            .any(|c| c == ':' || c.is_whitespace() || c.is_control() || c == '"')
    {
        return Err(Error::Delivery(format!(
            "{what} {value:?} cannot go into the kernel's ip= argument (at most 64 characters, no ':', quotes or whitespace)"
        )));
    }
    Ok(())
}

/// `ip=<client>::<gateway>:<netmask>:<hostname>:<device>:off[:<dns0>[:<dns1>]]`
/// for the identity's primary IPv4 address, IPv4 default gateway and the
/// first two IPv4 name servers.
pub fn ip_argument(id: &Identity, opts: &KernelIpOptions) -> Result<String> {
    let (client, prefix) = id.ipv4().ok_or_else(|| {
        Error::Delivery(format!(
            "{} has no IPv4 address to put into ip=",
            id.interface
        ))
    })?;
    let hostname = opts.hostname.as_deref().unwrap_or("");
    let device = opts.device.as_deref().unwrap_or("eth0");
    field("host name", hostname)?;
    field("device", device)?;
    if device.is_empty() {
        return Err(Error::Delivery("the guest device name is empty".into()));
    }
    let gateway = id.ipv4_gateway().map(|g| g.to_string()).unwrap_or_default();
    let mut arg = format!(
        "ip={client}::{gateway}:{}:{hostname}:{device}:off",
        netmask(prefix)
    );
    let dns: Vec<String> = id
        .dns
        .nameservers
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(v4) => Some(v4.to_string()),
            IpAddr::V6(_) => None,
        })
        .take(2)
        .collect();
    for server in dns {
        arg.push(':');
        arg.push_str(&server);
    }
    Ok(arg)
}

/// The user's `-append` string with the `ip=` argument added at the end.
/// Refused if the user already gave an `ip=` (or `nfsaddrs=`) argument:
/// the kernel would use only one of them, silently.
pub fn append_ip_argument(append: &str, id: &Identity, opts: &KernelIpOptions) -> Result<String> {
    if let Some(word) = append
        .split_whitespace()
        .find(|w| w.starts_with("ip=") || w.starts_with("nfsaddrs="))
    {
        return Err(Error::Delivery(format!(
            "the -append string already has {word:?}; remove it or choose another delivery"
        )));
    }
    let arg = ip_argument(id, opts)?;
    let user = append.trim();
    Ok(if user.is_empty() {
        arg
    } else {
        format!("{user} {arg}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Address, Dns, Route};
    use macvtap_net::MacAddr;

    fn identity() -> Identity {
        let addr = |a: &str, len| Address {
            address: a.parse().unwrap(),
            prefix_len: len,
            flags: 0x80,
            scope: 0,
            broadcast: None,
            label: None,
        };
        Identity {
            interface: "eth0".into(),
            ifindex: 2,
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            mtu: 1500,
            up: true,
            addresses: vec![
                addr("2001:db8::2", 64),
                addr("172.17.0.2", 16),
                Address {
                    flags: 0x81,
                    ..addr("172.17.0.3", 16)
                },
            ],
            routes: vec![Route {
                destination: "0.0.0.0".parse().unwrap(),
                prefix_len: 0,
                gateway: Some("172.17.0.1".parse().unwrap()),
                prefsrc: None,
                metric: None,
                protocol: 3,
                scope: 0,
                table: 254,
            }],
            dns: Dns {
                nameservers: vec![
                    "2001:db8::53".parse().unwrap(),
                    "10.0.0.53".parse().unwrap(),
                    "10.0.0.54".parse().unwrap(),
                    "10.0.0.55".parse().unwrap(),
                ],
                search: vec!["example.org".into()],
            },
        }
    }

    #[test]
    fn the_kernels_form_with_gateway_mask_and_two_ipv4_dns() {
        let opts = KernelIpOptions {
            hostname: Some("vm1".into()),
            device: None,
        };
        assert_eq!(
            ip_argument(&identity(), &opts).unwrap(),
            "ip=172.17.0.2::172.17.0.1:255.255.0.0:vm1:eth0:off:10.0.0.53:10.0.0.54"
        );
    }

    #[test]
    fn no_gateway_no_dns_no_hostname() {
        let mut id = identity();
        id.routes.clear();
        id.dns = Dns::default();
        let opts = KernelIpOptions {
            hostname: None,
            device: Some("ens3".into()),
        };
        assert_eq!(
            ip_argument(&id, &opts).unwrap(),
            "ip=172.17.0.2:::255.255.0.0::ens3:off"
        );
    }

    #[test]
    fn appended_to_the_users_string() {
        let opts = KernelIpOptions::default();
        let out = append_ip_argument("  console=ttyS0 quiet ", &identity(), &opts).unwrap();
        assert_eq!(
            out,
            "console=ttyS0 quiet ip=172.17.0.2::172.17.0.1:255.255.0.0::eth0:off:10.0.0.53:10.0.0.54"
        );
        assert!(append_ip_argument("", &identity(), &opts)
            .unwrap()
            .starts_with("ip=172.17.0.2:"));
    }

    #[test]
    fn refuses_a_second_ip_argument_and_bad_fields() {
        let opts = KernelIpOptions::default();
        let err = append_ip_argument("console=ttyS0 ip=dhcp", &identity(), &opts).unwrap_err();
        assert!(err.to_string().contains("ip=dhcp"), "{err}");
        // A word that merely contains ip= is not one.
        assert!(append_ip_argument("guestip=1.2.3.4", &identity(), &opts).is_ok());
        for bad in ["a:b", "a b", "x\"y"] {
            let opts = KernelIpOptions {
                hostname: Some(bad.into()),
                device: None,
            };
            assert!(ip_argument(&identity(), &opts).is_err(), "{bad}");
        }
        let mut id = identity();
        id.addresses.retain(|a| a.address.is_ipv6());
        assert!(ip_argument(&id, &KernelIpOptions::default()).is_err());
    }
}
