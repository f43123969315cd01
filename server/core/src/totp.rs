//! TOTP (RFC 6238) as authenticator apps compute it: HMAC-SHA1 over the 30-second time step,
//! dynamic truncation (RFC 4226), 6 digits (CONTRACT.md §18).
//!
//! A few lines over `ring::hmac` rather than a crate, so that ring stays the server's one
//! cryptographic provider. SHA-1 is what every authenticator app uses by default; inside an
//! HMAC its collision weakness does not apply (hence ring's `..._FOR_LEGACY_USE_ONLY` name).
//!
//! Everything here is pure and takes the time as an argument (Unix seconds), so that tests and
//! callers choose the clock; which step was used last (replays) is the store's business
//! (`totp_factors.last_step`), and [`matching_step`] says which step a code matched.

use ring::hmac;

/// Seconds per step.
pub const STEP_SECONDS: i64 = 30;
/// Digits per code.
pub const DIGITS: usize = 6;
/// Random bytes in a new secret (160 bits, RFC 4226's recommendation).
pub const SECRET_BYTES: usize = 20;
/// Steps accepted on either side of the current one (a clock off by up to 30 s, a code typed
/// as it changes).
pub const WINDOW: i64 = 1;

/// The time step of `unix_seconds`.
pub fn step_at(unix_seconds: i64) -> i64 {
    unix_seconds.div_euclid(STEP_SECONDS)
}

/// The code of `step` under `secret`, with `digits` digits (6 for ours; RFC 6238's vectors use 8).
pub fn code_with_digits(secret: &[u8], step: i64, digits: usize) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let tag = hmac::sign(&key, &step.to_be_bytes());
    let mac = tag.as_ref();
    let offset = usize::from(mac[mac.len() - 1] & 0x0f);
    let binary = (u32::from(mac[offset] & 0x7f) << 24)
        | (u32::from(mac[offset + 1]) << 16)
        | (u32::from(mac[offset + 2]) << 8)
        | u32::from(mac[offset + 3]);
    let modulus = 10u64.pow(u32::try_from(digits).unwrap_or(6));
    format!("{:0digits$}", u64::from(binary) % modulus)
}

/// The 6-digit code of `step` under `secret`.
pub fn code(secret: &[u8], step: i64) -> String {
    code_with_digits(secret, step, DIGITS)
}

/// Whether `text` has the shape of a code: exactly 6 ASCII digits (spaces allowed, as apps
/// show `123 456`).
pub fn normalize(text: &str) -> Option<String> {
    let digits: String = text.chars().filter(|c| *c != ' ').collect();
    (digits.len() == DIGITS && digits.bytes().all(|b| b.is_ascii_digit())).then_some(digits)
}

/// The step, within [`WINDOW`] of `now`'s, whose code is `given`; `None` when none is. Every
/// step of the window is computed and compared in constant time, so the answer's timing says
/// nothing about which digits were right. The caller refuses a step at or before the last one
/// used (a replay).
pub fn matching_step(secret: &[u8], given: &str, unix_seconds: i64) -> Option<i64> {
    let given = normalize(given)?;
    let now = step_at(unix_seconds);
    let mut found = None;
    for step in (now - WINDOW)..=(now + WINDOW) {
        if same(code(secret, step).as_bytes(), given.as_bytes()) && found.is_none() {
            found = Some(step);
        }
    }
    found
}

/// Constant-time equality of two byte strings of public length.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32 without padding: how authenticator apps take a secret.
pub fn base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for byte in bytes {
        buffer = (buffer << 8) | u32::from(*byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(BASE32[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(BASE32[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// The `otpauth://` URL an authenticator app reads (typed in, or from a QR code):
/// `otpauth://totp/Outpost:<email>?secret=…&issuer=Outpost&algorithm=SHA1&digits=6&period=30`.
pub fn otpauth_url(issuer: &str, account: &str, secret: &[u8]) -> String {
    let encode = |text: &str| {
        url::form_urlencoded::byte_serialize(text.as_bytes())
            .collect::<String>()
            .replace('+', "%20")
    };
    format!(
        "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits=6&period=30",
        encode(issuer),
        encode(account),
        base32(secret),
        encode(issuer)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B's SHA-1 key.
    const RFC_KEY: &[u8] = b"12345678901234567890";

    #[test]
    fn rfc_6238_sha1_vectors() {
        for (time, expected) in [
            (59, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            assert_eq!(
                code_with_digits(RFC_KEY, step_at(time), 8),
                expected,
                "T = {time}"
            );
        }
    }

    #[test]
    fn six_digits_are_the_last_six_of_the_rfc_values() {
        // RFC 4226 appendix D (counter-based, the same truncation): count 0 → 755224.
        assert_eq!(code(RFC_KEY, 0), "755224");
        assert_eq!(code(RFC_KEY, 1), "287082");
        assert_eq!(code(RFC_KEY, step_at(59)), "287082");
    }

    #[test]
    fn one_step_either_side_is_accepted_and_no_more() {
        let now = 1_700_000_000;
        let step = step_at(now);
        for offset in -1..=1 {
            let given = code(RFC_KEY, step + offset);
            assert_eq!(matching_step(RFC_KEY, &given, now), Some(step + offset));
        }
        for offset in [-3, -2, 2, 3] {
            let given = code(RFC_KEY, step + offset);
            // A different step's code may collide by chance; these do not.
            assert_eq!(matching_step(RFC_KEY, &given, now), None, "offset {offset}");
        }
    }

    #[test]
    fn malformed_codes_match_nothing() {
        let now = 1_700_000_000;
        let right = code(RFC_KEY, step_at(now));
        for wrong in ["", "12345", "1234567", "abcdef", "12345a", "١٢٣٤٥٦"] {
            assert_eq!(matching_step(RFC_KEY, wrong, now), None, "{wrong:?}");
        }
        let spaced = format!("{} {}", &right[..3], &right[3..]);
        assert_eq!(matching_step(RFC_KEY, &spaced, now), Some(step_at(now)));
    }

    #[test]
    fn base32_is_rfc_4648() {
        assert_eq!(base32(b""), "");
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32(RFC_KEY), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
    }

    #[test]
    fn the_otpauth_url_names_the_account_and_the_secret() {
        let url = otpauth_url("Outpost", "ops@example.com", RFC_KEY);
        assert!(
            url.starts_with("otpauth://totp/Outpost:ops%40example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Outpost"),
            "{url}"
        );
        assert!(url.ends_with("&algorithm=SHA1&digits=6&period=30"), "{url}");
    }
}
