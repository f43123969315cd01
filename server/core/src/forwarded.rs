//! Who the client is: the peer address of its connection, or, behind a proxy the operator
//! trusts (`--trusted-proxy CIDR`), the address that proxy says it forwarded for.
//!
//! `X-Forwarded-For` is a list anyone can write: a client sends whatever it likes, and each
//! proxy on the way appends the address it received the request from. Only the entries
//! appended by proxies we trust are true, so the client is the **right-most entry that is not
//! itself a trusted proxy**, and only when the peer is a trusted proxy in the first place.
//! Without `--trusted-proxy` the header is ignored altogether (a tool keyed on its left-most
//! entry, such as `tower_governor`'s `SmartIpKeyExtractor`, lets any client pick its own key).
//!
//! Anything malformed (an entry that is not an address, a header that is not text) falls back
//! to the peer: a rate limit keyed on the result must never be escaped by sending garbage.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// A block of addresses, `10.0.0.0/8` or `fd00::/8`; a bare address is a block of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is inside the block. An IPv4 address written as IPv6 (`::ffff:10.0.0.1`,
    /// what a dual-stack socket reports) is the IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network = address
            .parse::<IpAddr>()
            .map_err(|_| format!("{text:?} is not an address or a CIDR block (10.0.0.0/8)"))?
            .to_canonical();
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Self { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The proxies whose `X-Forwarded-For` counts (`--trusted-proxy`); none by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// Trusts the proxies in `blocks`.
    pub fn new(blocks: Vec<Cidr>) -> Self {
        Self(blocks)
    }

    /// Whether `ip` is one of them.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|block| block.contains(ip))
    }

    /// Whether any proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The client of a request that came from `peer` with these `X-Forwarded-For` header
    /// values (in the order received; several headers are one list): the peer unless it is a
    /// trusted proxy; else the right-most entry that is not a trusted proxy (the left-most if
    /// every entry is trusted: the client is inside the trusted network). An entry that is not
    /// an address, or no entry at all, gives the peer.
    pub fn client(&self, peer: IpAddr, forwarded_for: &[&str]) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = None;
        for entry in forwarded_for.iter().rev().flat_map(|v| v.rsplit(',')) {
            let Some(ip) = parse_entry(entry) else {
                return peer;
            };
            client = Some(ip);
            if !self.trusts(ip) {
                break;
            }
        }
        client.unwrap_or(peer)
    }
}

/// One `X-Forwarded-For` entry: an address, also as some proxies write it with a port
/// (`1.2.3.4:5678`, `[2001:db8::1]:443`) or bracketed.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = entry.strip_prefix('[') {
        let (ip, tail) = rest.split_once(']')?;
        if !(tail.is_empty() || tail.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return ip.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
    }
    let (ip, port) = entry.rsplit_once(':')?;
    if !is_port(port) {
        return None;
    }
    ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    fn proxies(blocks: &[&str]) -> TrustedProxies {
        TrustedProxies::new(blocks.iter().map(|b| b.parse().expect("a block")).collect())
    }

    #[test]
    fn blocks_parse_and_contain() {
        let block: Cidr = "10.0.0.0/8".parse().expect("v4");
        assert!(block.contains(ip("10.255.0.1")));
        assert!(block.contains(ip("::ffff:10.1.2.3")));
        assert!(!block.contains(ip("11.0.0.1")));
        assert!(!block.contains(ip("::1")));
        let one: Cidr = "192.168.1.7".parse().expect("bare");
        assert!(one.contains(ip("192.168.1.7")));
        assert!(!one.contains(ip("192.168.1.8")));
        let v6: Cidr = "fd00::/8".parse().expect("v6");
        assert!(v6.contains(ip("fd12::1")));
        assert!(!v6.contains(ip("fe80::1")));
        let all: Cidr = "0.0.0.0/0".parse().expect("all");
        assert!(all.contains(ip("8.8.8.8")));
        assert_eq!(one.to_string(), "192.168.1.7/32");
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "x",
            "10.0.0.0/-1",
            "10.0.0.0/",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn without_trusted_proxies_the_header_is_ignored() {
        let none = TrustedProxies::default();
        assert_eq!(none.client(ip("127.0.0.1"), &["1.2.3.4"]), ip("127.0.0.1"));
        // A trusted list that does not hold the peer: the same.
        let other = proxies(&["10.0.0.0/8"]);
        assert_eq!(other.client(ip("8.8.8.8"), &["10.0.0.1"]), ip("8.8.8.8"));
    }

    #[test]
    fn the_right_most_untrusted_entry_is_the_client() {
        let lb = proxies(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.2");
        assert_eq!(lb.client(peer, &["203.0.113.9"]), ip("203.0.113.9"));
        // The client claims to be someone else: its claim is left of what the proxy appended.
        assert_eq!(
            lb.client(peer, &["1.1.1.1, 203.0.113.9"]),
            ip("203.0.113.9")
        );
        // A chain of trusted proxies is walked through.
        assert_eq!(
            lb.client(peer, &["1.1.1.1, 203.0.113.9, 10.0.0.7"]),
            ip("203.0.113.9")
        );
        // Several headers are one list, in order.
        assert_eq!(
            lb.client(peer, &["1.1.1.1", "203.0.113.9, 10.1.1.1"]),
            ip("203.0.113.9")
        );
        // A client inside the trusted network.
        assert_eq!(lb.client(peer, &["10.9.9.9, 10.0.0.7"]), ip("10.9.9.9"));
        // Ports and brackets some proxies add; IPv4 written as IPv6.
        assert_eq!(lb.client(peer, &["203.0.113.9:4711"]), ip("203.0.113.9"));
        assert_eq!(lb.client(peer, &["[2001:db8::1]:443"]), ip("2001:db8::1"));
        assert_eq!(lb.client(peer, &["[2001:db8::1]"]), ip("2001:db8::1"));
        assert_eq!(lb.client(peer, &["2001:db8::1"]), ip("2001:db8::1"));
        assert_eq!(
            lb.client(ip("::ffff:10.0.0.2"), &["::ffff:1.2.3.4"]),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn spoofing_and_garbage_fall_back_to_the_peer() {
        let lb = proxies(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.2");
        // Garbage appended after the untrusted entry (that is, by a trusted proxy): the peer.
        for bad in [
            "",
            " ",
            ",",
            "unknown",
            "1.2.3.4, garbage",
            "1.2.3.4,,",
            "1.2.3.4:99999999",
            "[::1",
            "[::1]x",
            "1.2.3.4:",
            "::1:80:x",
            "\u{0}",
        ] {
            assert_eq!(lb.client(peer, &[bad]), peer, "{bad:?}");
        }
        assert_eq!(lb.client(peer, &[]), peer);
        // Garbage left of the client's entry is the client's own and never read.
        assert_eq!(lb.client(peer, &["garbage, 1.2.3.4"]), ip("1.2.3.4"));
        // A client that is not a proxy cannot choose its address, however it writes it.
        let direct = ip("198.51.100.1");
        assert_eq!(lb.client(direct, &["10.0.0.9"]), direct);
        assert_eq!(lb.client(direct, &["1.1.1.1, 10.0.0.9"]), direct);
        // A very long header is read without trouble.
        let long = vec!["1.1.1.1"; 10_000].join(",");
        assert_eq!(lb.client(peer, &[&long]), ip("1.1.1.1"));
    }
}
