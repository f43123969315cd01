//! Which addresses the server may send to on a caller's behalf: the judgement behind the SSRF
//! rule of job webhooks and integrations.
//!
//! A URL comes from an API caller, so a request to it must not reach the server's own network
//! (loopback, private ranges, link-local cloud metadata, …) unless the operator allows it. One
//! pure function, [`non_public`], decides for an address, and is used both for a URL whose host
//! is an address (when it is saved) and for every address a name resolves to (at each attempt,
//! which then connects to exactly the address judged).
//!
//! IPv4 follows IANA's special-purpose registry. IPv6 is judged by what the address reaches:
//! an address that carries an IPv4 address (IPv4-mapped, NAT64, 6to4, Teredo) is delivered to
//! that IPv4 address by the host's stack, a translator or a relay, so it is judged by the IPv4
//! rules; any other address is public only inside the global unicast range 2000::/3 and outside
//! the special-purpose ranges there that are not globally reachable. A network-specific NAT64
//! prefix (an operator's own /96 inside 2000::/3) cannot be told from an ordinary address: an
//! operator who runs one should keep the server's egress filtered as well.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The reason every refusal ends with (the dashboard and logs show it after the address).
pub(crate) const NON_PUBLIC: &str = "a loopback, private or otherwise non-public address";

/// IPv6 ranges outside 2000::/3 or not globally reachable, most specific first, with their
/// names in IANA's registry. Those that carry an IPv4 address are judged before this table.
const SPECIAL_V6: &[(Ipv6Addr, u8, &str)] = &[
    (Ipv6Addr::UNSPECIFIED, 128, "unspecified"),
    (Ipv6Addr::LOCALHOST, 128, "loopback"),
    // Deprecated (RFC 4291) and never routed: refused whatever IPv4 address it names.
    (Ipv6Addr::UNSPECIFIED, 96, "IPv4-compatible, deprecated"),
    (v6(0x64, 0xff9b, 1), 48, "local-use IPv4/IPv6 translation"),
    (v6(0x100, 0, 0), 64, "discard-only"),
    (v6(0x2001, 0xdb8, 0), 32, "documentation"),
    // Teredo (2001::/32) is judged by its IPv4 addresses; the rest of 2001::/23 holds protocol
    // anycast and ORCHID addresses, none of them a place to send a webhook.
    (v6(0x2001, 0, 0), 23, "IETF protocol assignments"),
    (v6(0x3fff, 0, 0), 20, "documentation"),
    (v6(0x5f00, 0, 0), 16, "segment routing (SRv6) SIDs"),
    (v6(0xfc00, 0, 0), 7, "unique local"),
    (v6(0xfe80, 0, 0), 10, "link-local"),
    (v6(0xfec0, 0, 0), 10, "site-local, deprecated"),
    (v6(0xff00, 0, 0), 8, "multicast"),
];

/// An IPv6 address from its first three 16-bit groups (the rest zero).
const fn v6(a: u16, b: u16, c: u16) -> Ipv6Addr {
    Ipv6Addr::new(a, b, c, 0, 0, 0, 0, 0)
}

/// Why `ip` is not an address on the public internet (a phrase to follow "refusing X: "), or
/// `None` when it is one.
pub(crate) fn non_public(ip: IpAddr) -> Option<String> {
    match ip {
        IpAddr::V4(v4) => (!is_public_v4(v4)).then(|| NON_PUBLIC.to_owned()),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn non_public_v6(ip: Ipv6Addr) -> Option<String> {
    if let Some((form, carried)) = carried_v4(ip) {
        return carried
            .into_iter()
            .find(|v4| !is_public_v4(*v4))
            .map(|v4| format!("it carries {v4} ({form}), {NON_PUBLIC}"));
    }
    if let Some((net, len, name)) = SPECIAL_V6
        .iter()
        .find(|(net, len, _)| within(ip, *net, *len))
    {
        return Some(format!("it is in {net}/{len} ({name}), {NON_PUBLIC}"));
    }
    (!within(ip, v6(0x2000, 0, 0), 3))
        .then(|| format!("it is outside 2000::/3 (global unicast), {NON_PUBLIC}"))
}

/// The IPv4 addresses traffic to `ip` is delivered to, with the form that carries them.
fn carried_v4(ip: Ipv6Addr) -> Option<(&'static str, Vec<Ipv4Addr>)> {
    let s = ip.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if let Some(mapped) = ip.to_ipv4_mapped() {
        return Some(("IPv4-mapped ::ffff:0:0/96", vec![mapped]));
    }
    if within(ip, v6(0x64, 0xff9b, 0), 96) {
        return Some(("NAT64 64:ff9b::/96", vec![v4(s[6], s[7])]));
    }
    if within(ip, v6(0x2002, 0, 0), 16) {
        return Some(("6to4 2002::/16", vec![v4(s[1], s[2])]));
    }
    if within(ip, v6(0x2001, 0, 0), 32) {
        // The client's address is stored inverted; the server's is the relay's way in.
        return Some(("Teredo 2001::/32", vec![v4(!s[6], !s[7]), v4(s[2], s[3])]));
    }
    None
}

/// Whether `ip` is in `net/len`.
fn within(ip: Ipv6Addr, net: Ipv6Addr, len: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}

/// Whether an IPv4 address is globally reachable (IANA's special-purpose registry).
fn is_public_v4(v4: Ipv4Addr) -> bool {
    let [a, b, c, _] = v4.octets();
    !(v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || v4.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every form the rule knows, with whether it is public.
    const TABLE: &[(&str, bool)] = &[
        // IPv4.
        ("1.1.1.1", true),
        ("8.8.8.8", true),
        ("192.0.1.1", true),
        ("127.0.0.1", false),
        ("10.1.2.3", false),
        ("172.16.0.1", false),
        ("192.168.1.1", false),
        ("169.254.169.254", false),
        ("0.0.0.0", false),
        ("0.1.2.3", false),
        ("100.64.0.1", false),
        ("192.0.0.8", false),
        ("192.0.2.1", false),
        ("198.18.0.1", false),
        ("224.0.0.1", false),
        ("240.0.0.1", false),
        ("255.255.255.255", false),
        // Plain IPv6.
        ("2606:4700::1111", true),
        ("2a00:1450:4001::200e", true),
        ("2620:4f:8000::1", true),
        ("::", false),
        ("::1", false),
        ("::a00:1", false),
        ("::808:808", false),
        ("100::1", false),
        ("2001:db8::1", false),
        ("2001:1::1", false),
        ("2001:20::1", false),
        ("3fff::1", false),
        ("3fff:fff::1", false),
        ("5f00::1", false),
        ("fd00::1", false),
        ("fc00::1", false),
        ("fe80::1", false),
        ("fec0::1", false),
        ("ff02::1", false),
        ("4000::1", false),
        ("1::1", false),
        ("::ffff:0:a00:1", false),
        // IPv4-mapped: the IPv4 rule.
        ("::ffff:8.8.8.8", true),
        ("::ffff:127.0.0.1", false),
        ("::ffff:10.0.0.1", false),
        // NAT64 well-known prefix: the IPv4 rule; the local-use prefix is refused.
        ("64:ff9b::808:808", true),
        ("64:ff9b::a00:1", false),
        ("64:ff9b::7f00:1", false),
        ("64:ff9b::a9fe:a9fe", false),
        ("64:ff9b:1::808:808", false),
        ("64:ff9b:1:2::a00:1", false),
        // 6to4: the IPv4 address in bits 16..48.
        ("2002:808:808::1", true),
        ("2002:a00:1::1", false),
        ("2002:7f00:1::1", false),
        ("2002:c0a8:101::1", false),
        // Teredo: the server (bits 32..64) and the inverted client (the last 32 bits).
        ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", true),
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", false),
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", false),
        ("2001:0:a00:1:8000:63bf:f7f7:f7f7", false),
    ];

    #[test]
    fn every_form_is_judged_by_what_it_reaches() {
        for (ip, public) in TABLE {
            let why = non_public(ip.parse().expect("an address"));
            assert_eq!(why.is_none(), *public, "{ip}: {why:?}");
        }
    }

    #[test]
    fn a_refusal_names_the_address_carried_or_the_range() {
        let why = |ip: &str| non_public(ip.parse().expect("an address")).expect("refused");
        assert_eq!(
            why("64:ff9b::a00:1"),
            "it carries 10.0.0.1 (NAT64 64:ff9b::/96), a loopback, private or otherwise non-public address"
        );
        assert!(why("2002:a00:1::1").contains("carries 10.0.0.1 (6to4"));
        assert!(why("2001:0:4136:e378:8000:63bf:f5ff:fffe").contains("carries 10.0.0.1 (Teredo"));
        assert!(why("::ffff:127.0.0.1").contains("carries 127.0.0.1 (IPv4-mapped"));
        assert!(why("64:ff9b:1::1").contains("64:ff9b:1::/48 (local-use"));
        assert!(why("fd00::1").contains("fc00::/7 (unique local)"));
        assert!(why("4000::1").contains("outside 2000::/3"));
        assert!(why("10.0.0.1").contains("non-public"));
    }

    #[test]
    fn prefixes_match_on_their_bits_only() {
        assert!(within("::".parse().expect("ip"), Ipv6Addr::UNSPECIFIED, 0));
        assert!(within(
            "2001:db8:ffff::".parse().expect("ip"),
            v6(0x2001, 0xdb8, 0),
            32
        ));
        assert!(!within(
            "2001:db9::".parse().expect("ip"),
            v6(0x2001, 0xdb8, 0),
            32
        ));
        assert!(within("::1".parse().expect("ip"), Ipv6Addr::LOCALHOST, 128));
        assert!(!within(
            "::2".parse().expect("ip"),
            Ipv6Addr::LOCALHOST,
            128
        ));
    }
}
