//! Money and points arithmetic. Amounts are integers in fen (1/100 yuan); points are integers.
//! Nothing here ever touches a float.

/// Applies a level discount: `price * percent / 100`, rounded half up to the nearest fen (or
/// point). `percent` is what the member pays (100 = no discount) and is clamped to `1..=100`, so
/// a discount can never raise a price or make it negative.
pub fn discounted(price: i64, percent: i16) -> i64 {
    let percent = i64::from(percent.clamp(1, 100));
    // i128 keeps the product exact for any i64 price.
    let scaled = i128::from(price.max(0)) * i128::from(percent);
    ((scaled + 50) / 100) as i64
}

/// Formats fen as yuan with two decimals (`12345` → `"123.45"`), as Alipay's `total_amount` wants.
pub fn fen_to_yuan(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    let abs = fen.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_price_member_pays_the_catalogue_price() {
        assert_eq!(discounted(3000, 100), 3000);
    }

    #[test]
    fn a_discount_rounds_half_up_to_the_fen() {
        assert_eq!(discounted(2999, 95), 2849); // 2849.05
        assert_eq!(discounted(10, 95), 10); // 9.5 rounds up
        assert_eq!(discounted(1, 90), 1); // 0.9 rounds up
    }

    #[test]
    fn a_discount_never_raises_or_negates_a_price() {
        assert_eq!(discounted(1000, 150), 1000);
        assert_eq!(discounted(1000, -5), 10);
        assert_eq!(discounted(-5, 90), 0);
        assert_eq!(discounted(i64::MAX, 100), i64::MAX);
    }

    #[test]
    fn fen_format_as_yuan_with_two_decimals() {
        assert_eq!(fen_to_yuan(12345), "123.45");
        assert_eq!(fen_to_yuan(5), "0.05");
        assert_eq!(fen_to_yuan(-120), "-1.20");
    }
}
