//! `MacAddr` as `"02:00:00:00:00:01"` in records.

use macvtap_net::MacAddr;
use serde::{Deserialize, Deserializer, Serializer};

pub fn serialize<S: Serializer>(mac: &MacAddr, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(mac)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<MacAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(serde::de::Error::custom)
}
