use std::fmt;
use std::str::FromStr;

/// An Ethernet MAC address usable as a unicast interface address.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

/// Why a string is not a usable interface MAC.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    /// Not six colon- or dash-separated hex octets, nor three dotted
    /// groups of four hex digits.
    #[error("{0:?} is not a MAC address (want six hex octets like 02:00:00:00:00:01)")]
    Malformed(String),
    /// The group bit is set: an interface cannot own it.
    #[error("{0} is a multicast or broadcast address, not usable as an interface MAC")]
    Multicast(String),
    /// 00:00:00:00:00:00.
    #[error("{0} is the all-zero address, not usable as an interface MAC")]
    Zero(String),
}

impl MacAddr {
    /// A random locally administered unicast address (from the kernel's
    /// generator, `/dev/urandom`).
    pub fn random_local() -> Self {
        use std::io::Read;
        let mut b = [0u8; 6];
        // Every Linux has /dev/urandom; zeros would still be a valid
        // (only less unique) address after the bits below.
        if let Ok(mut urandom) = std::fs::File::open("/dev/urandom") {
            let _ = urandom.read_exact(&mut b);
        }
        b[0] = (b[0] & 0xfc) | 0x02;
        MacAddr(b)
    }

    /// Parse and require a unicast, non-zero address.
    pub fn parse_unicast(s: &str) -> Result<Self, MacError> {
        let mac: MacAddr = s.parse()?;
        if mac.0[0] & 1 == 1 {
            return Err(MacError::Multicast(s.to_string()));
        }
        if mac.0 == [0; 6] {
            return Err(MacError::Zero(s.to_string()));
        }
        Ok(mac)
    }

    /// From netlink's IFLA_ADDRESS bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
    }
}

/// The 6-byte forms Go's `net.ParseMAC` reads (the reference CNI plugins
/// and kubevirt's macvtap-cni parse with it, so NADs carry them): six
/// octets with `:` or `-`, or three groups of four digits with `.`
/// (`0200.5e10.0001`).
impl FromStr for MacAddr {
    type Err = MacError;
    fn from_str(s: &str) -> Result<Self, MacError> {
        let malformed = || MacError::Malformed(s.to_string());
        let (sep, width) = if s.contains('.') {
            ('.', 4)
        } else if s.contains('-') {
            ('-', 2)
        } else {
            (':', 2)
        };
        let groups: Vec<&str> = s.split(sep).collect();
        let well_formed = groups.len() * width == 12
            && groups
                .iter()
                .all(|g| g.len() == width && g.bytes().all(|b| b.is_ascii_hexdigit()));
        if !well_formed {
            return Err(malformed());
        }
        let digits = groups.concat();
        let mut out = [0u8; 6];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).map_err(|_| malformed())?;
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_lowercase() {
        let mac = MacAddr::parse_unicast("02:AB:cd:00:11:FF").unwrap();
        assert_eq!(mac.to_string(), "02:ab:cd:00:11:ff");
        assert_eq!(MacAddr::parse_unicast("02-00-00-00-00-01").unwrap().0[5], 1);
    }

    #[test]
    fn refuses_unusable_addresses() {
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:01:02",
            "0g:00:00:00:00:01",
            "2:0:0:0:0:1",
            "02:00:00:00:00:001",
        ] {
            assert!(
                matches!(MacAddr::parse_unicast(bad), Err(MacError::Malformed(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            MacAddr::parse_unicast("01:00:5e:00:00:01"),
            Err(MacError::Multicast(_))
        ));
        assert!(matches!(
            MacAddr::parse_unicast("ff:ff:ff:ff:ff:ff"),
            Err(MacError::Multicast(_))
        ));
        assert!(matches!(
            MacAddr::parse_unicast("00:00:00:00:00:00"),
            Err(MacError::Zero(_))
        ));
    }

    #[test]
    fn macs_in_go_forms() {
        for (written, want) in [
            ("02:AB:00:00:00:01", "02:ab:00:00:00:01"),
            ("02-ab-00-00-00-02", "02:ab:00:00:00:02"),
            ("02ab.0000.0003", "02:ab:00:00:00:03"),
            ("02AB.0000.0004", "02:ab:00:00:00:04"),
        ] {
            assert_eq!(
                MacAddr::parse_unicast(written).map(|m| m.to_string()),
                Ok(want.into())
            );
        }
        assert_eq!(
            MacAddr::parse_unicast("0100.5e00.0001"),
            Err(MacError::Multicast("0100.5e00.0001".into()))
        );
        assert_eq!(
            MacAddr::parse_unicast("0000.0000.0000"),
            Err(MacError::Zero("0000.0000.0000".into()))
        );
        for bad in [
            "02ab.0000",
            "02ab.0000.0003.0004",
            "02a.b000.0003",
            "02ab.00g0.0003",
            "02ab:0000.0003",
        ] {
            assert!(
                matches!(MacAddr::parse_unicast(bad), Err(MacError::Malformed(_))),
                "{bad}"
            );
        }
    }
}
