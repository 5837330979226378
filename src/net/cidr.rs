//! IP networks in CIDR notation (`10.0.0.0/8`, `::1/128`), for `forward_auth.trusted_proxies`.
//!
//! std's [`IpAddr`] does the address parsing (it refuses leading zeros, zone ids and
//! every other ambiguous spelling); the prefix is plain bit arithmetic on the address
//! as an integer. Parsed once at config load, matched per forward-auth request.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// One network: the addresses whose first `prefix` bits equal `network`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why a string is not a CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not an IP address")]
    Address(String),
    #[error("{0:?} is not a prefix length (0-32 for IPv4, 0-128 for IPv6)")]
    Prefix(String),
    /// `10.0.0.1/8`: a typo for the network or for the host, so refused rather than guessed.
    #[error("{given} has bits set past the /{prefix} prefix; the network is {network}/{prefix}")]
    HostBits {
        given: String,
        network: IpAddr,
        prefix: u8,
    },
}

impl Cidr {
    /// Whether `ip` is inside this network. An IPv4-mapped IPv6 peer (`::ffff:10.1.2.3`,
    /// what a dual-stack `[::]` listener reports for an IPv4 client) is compared as the
    /// IPv4 address it is, so `10.0.0.0/8` covers it.
    pub fn contains(&self, ip: IpAddr) -> bool {
        same_network(self.network, ip, self.prefix)
            || same_network(self.network, ip.to_canonical(), self.prefix)
    }

    /// Whether this network covers every address of its family (`0.0.0.0/0`, `::/0`).
    pub fn is_everything(&self) -> bool {
        self.prefix == 0
    }
}

/// Whether `a` and `b` are of one family and agree on their first `prefix` bits.
fn same_network(a: IpAddr, b: IpAddr, prefix: u8) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = mask_v4(prefix);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = mask_v6(prefix);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// The first `prefix` bits set (`prefix` at most 32).
fn mask_v4(prefix: u8) -> u32 {
    // A shift by the full width overflows, hence the explicit /0.
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

/// The first `prefix` bits set (`prefix` at most 128).
fn mask_v6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `address/prefix`, or a bare address for that one host (`/32`, `/128`).
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let s = s.trim();
        let (address, prefix) = match s.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (s, None),
        };
        let network =
            IpAddr::from_str(address).map_err(|_| CidrError::Address(address.to_owned()))?;
        let width = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            // Digits only: `u8::from_str` would also take `+8`.
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                match p.parse::<u8>() {
                    Ok(n) if n <= width => n,
                    _ => return Err(CidrError::Prefix(p.to_owned())),
                }
            }
            Some(p) => return Err(CidrError::Prefix(p.to_owned())),
        };
        let masked = match network {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask_v4(prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask_v6(prefix))),
        };
        if masked != network {
            return Err(CidrError::HostBits {
                given: s.to_owned(),
                network: masked,
                prefix,
            });
        }
        Ok(Cidr { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::{Cidr, CidrError};
    use std::net::IpAddr;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_networks() {
        let net = cidr("10.0.0.0/8");
        assert!(net.contains(ip("10.0.0.0")));
        assert!(net.contains(ip("10.255.255.255")));
        assert!(!net.contains(ip("11.0.0.0")));
        assert!(!net.contains(ip("9.255.255.255")));
        let host = cidr("127.0.0.1/32");
        assert!(host.contains(ip("127.0.0.1")));
        assert!(!host.contains(ip("127.0.0.2")));
        assert_eq!(cidr("127.0.0.1"), host);
        let odd = cidr("192.168.4.0/23");
        assert!(odd.contains(ip("192.168.5.200")));
        assert!(!odd.contains(ip("192.168.6.1")));
        let all = cidr("0.0.0.0/0");
        assert!(all.is_everything());
        assert!(all.contains(ip("203.0.113.9")));
        assert!(
            !all.contains(ip("::1")),
            "an IPv4 network holds no IPv6 peer"
        );
    }

    #[test]
    fn ipv6_networks() {
        let net = cidr("fd00::/8");
        assert!(net.contains(ip("fd12:3456::1")));
        assert!(!net.contains(ip("fe80::1")));
        let host = cidr("::1/128");
        assert!(host.contains(ip("::1")));
        assert!(!host.contains(ip("::2")));
        assert!(!host.contains(ip("127.0.0.1")));
        assert!(cidr("2001:db8::/32").contains(ip("2001:db8:ffff::1")));
        assert!(!cidr("2001:db8::/33").contains(ip("2001:db8:8000::1")));
        assert!(cidr("::/0").contains(ip("2001:db8::1")));
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_networks() {
        assert!(cidr("127.0.0.0/8").contains(ip("::ffff:127.0.0.1")));
        assert!(!cidr("10.0.0.0/8").contains(ip("::ffff:127.0.0.1")));
        // Written in its mapped form, the network still matches the mapped peer.
        assert!(cidr("::ffff:127.0.0.0/104").contains(ip("::ffff:127.0.0.1")));
    }

    #[test]
    fn refuses_what_is_not_a_cidr() {
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "10.0.0.0/8/8",
            "10.0.0.0/ 8",
            "localhost",
            "10.0.0",
            "010.0.0.0/8",
            "fe80::1%eth0/128",
            "10.0.0.0/0008",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            "10.0.0.1/8".parse::<Cidr>(),
            Err(CidrError::HostBits {
                given: "10.0.0.1/8".into(),
                network: ip("10.0.0.0"),
                prefix: 8
            })
        );
        assert_eq!(
            "10.0.0.1/8".parse::<Cidr>().unwrap_err().to_string(),
            "10.0.0.1/8 has bits set past the /8 prefix; the network is 10.0.0.0/8"
        );
        assert_eq!(cidr(" ::1/128 ").to_string(), "::1/128");
    }
}
