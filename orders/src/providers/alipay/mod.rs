//! The Alipay open API (RSA2): requests signed with the app private key over every parameter
//! but `sign`, every `*_response` verified with the Alipay public key over its exact bytes, and
//! asynchronous notifications verified over every parameter they carry but `sign` and
//! `sign_type`.

mod client;
mod notify;

pub use client::Alipay;
pub use notify::AlipayNotification;

/// Parses an Alipay amount in yuan (`"12.34"`, at most two decimals) into fen.
pub fn yuan_to_fen(text: &str) -> Option<i64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty()
        || fraction.len() > 2
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let fraction: i64 = format!("{fraction:0<2}").parse().ok()?;
    whole.checked_mul(100)?.checked_add(fraction)
}

/// The string both directions sign: `k=v` pairs, empty values dropped, sorted by key, joined
/// with `&`, values raw (not URL-encoded).
pub(crate) fn signing_string<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut pairs: Vec<(&str, &str)> = params.into_iter().filter(|(_, v)| !v.is_empty()).collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuan_amounts_become_exact_fen() {
        assert_eq!(yuan_to_fen("12.34"), Some(1234));
        assert_eq!(yuan_to_fen("0.01"), Some(1));
        assert_eq!(yuan_to_fen("30.5"), Some(3050));
        assert_eq!(yuan_to_fen("30"), Some(3000));
        for bad in ["", "-1.00", "1.234", "1,00", ".5", "1e3", " 1.00"] {
            assert_eq!(yuan_to_fen(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_signing_string_is_sorted_and_skips_empty_values() {
        let s = signing_string([
            ("b", "2"),
            ("a", "1"),
            ("c", ""),
            ("biz_content", "{\"x\":1}"),
        ]);
        assert_eq!(s, "a=1&b=2&biz_content={\"x\":1}");
    }
}
