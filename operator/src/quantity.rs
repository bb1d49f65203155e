//! Byte sizes written as Kubernetes quantities (`256Mi`, `1G`, `1e9`).
//!
//! The API uses Kubernetes quantities for every size so that users write what they write in
//! resource requests; the node wants plain byte counts. This module converts one to the other
//! and refuses what is not a whole, non-negative number of bytes.

/// Why a quantity is not a byte count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not a Kubernetes quantity at all.
    #[error("`{0}` is not a quantity such as 256Mi, 1Gi or 500M")]
    Malformed(String),
    /// Negative, fractional or too large to be a number of bytes.
    #[error("`{0}` is not a whole number of bytes between 0 and 2^63")]
    OutOfRange(String),
}

const BINARY_SUFFIXES: [(&str, u32); 6] = [
    ("Ki", 1),
    ("Mi", 2),
    ("Gi", 3),
    ("Ti", 4),
    ("Pi", 5),
    ("Ei", 6),
];
const DECIMAL_SUFFIXES: [(&str, i32); 7] = [
    ("m", -3),
    ("k", 3),
    ("M", 6),
    ("G", 9),
    ("T", 12),
    ("P", 15),
    ("E", 18),
];

/// Converts a quantity to bytes: `256Mi` is 268435456, `1k` is 1000, `1.5Gi` is 1610612736.
pub fn to_bytes(text: &str) -> Result<u64, QuantityError> {
    let malformed = || QuantityError::Malformed(text.to_owned());
    let out_of_range = || QuantityError::OutOfRange(text.to_owned());
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number = number.strip_prefix('+').unwrap_or(number);
    if number.starts_with('-') {
        return Err(out_of_range());
    }
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return Err(malformed());
    }
    // Exact arithmetic: mantissa * 10^exp10 * 1024^exp1024.
    let mut mantissa: u128 = format!("{whole}{fraction}")
        .parse()
        .map_err(|_| out_of_range())?;
    let mut exp10 = -i32::try_from(fraction.len()).map_err(|_| malformed())?;
    let mut exp1024 = 0u32;
    if let Some(&(_, power)) = BINARY_SUFFIXES.iter().find(|(s, _)| *s == suffix) {
        exp1024 = power;
    } else if let Some(&(_, power)) = DECIMAL_SUFFIXES.iter().find(|(s, _)| *s == suffix) {
        exp10 += power;
    } else if let Some(exponent) = suffix.strip_prefix(['e', 'E']) {
        exp10 += exponent.parse::<i32>().map_err(|_| malformed())?;
    } else if !suffix.is_empty() {
        return Err(malformed());
    }
    for _ in 0..exp1024 {
        mantissa = mantissa.checked_mul(1024).ok_or_else(out_of_range)?;
    }
    while exp10 > 0 {
        mantissa = mantissa.checked_mul(10).ok_or_else(out_of_range)?;
        exp10 -= 1;
    }
    while exp10 < 0 {
        if !mantissa.is_multiple_of(10) {
            return Err(out_of_range());
        }
        mantissa /= 10;
        exp10 += 1;
    }
    u64::try_from(mantissa)
        .ok()
        .filter(|bytes| *bytes <= i64::MAX as u64)
        .ok_or_else(out_of_range)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_decimal_suffixes_convert_exactly() {
        assert_eq!(to_bytes("256Mi"), Ok(256 << 20));
        assert_eq!(to_bytes("1Gi"), Ok(1 << 30));
        assert_eq!(to_bytes("1.5Gi"), Ok(3 << 29));
        assert_eq!(to_bytes("500M"), Ok(500_000_000));
        assert_eq!(to_bytes("1k"), Ok(1000));
        assert_eq!(to_bytes("1e3"), Ok(1000));
        assert_eq!(to_bytes("2000m"), Ok(2));
        assert_eq!(to_bytes("0"), Ok(0));
        assert_eq!(to_bytes("+12"), Ok(12));
    }

    #[test]
    fn fractions_of_a_byte_and_negative_sizes_are_refused() {
        assert!(matches!(
            to_bytes("1500m"),
            Err(QuantityError::OutOfRange(_))
        ));
        assert!(matches!(to_bytes("0.5"), Err(QuantityError::OutOfRange(_))));
        assert!(matches!(
            to_bytes("-1Gi"),
            Err(QuantityError::OutOfRange(_))
        ));
        assert!(matches!(to_bytes("9Ei"), Err(QuantityError::OutOfRange(_))));
    }

    #[test]
    fn garbage_is_refused_with_the_expected_form() {
        for text in ["", "Mi", "12 Mi", "1Qi", "1.2.3", "e5", "1e"] {
            let err = to_bytes(text).unwrap_err();
            assert!(
                matches!(err, QuantityError::Malformed(_)),
                "{text}: {err:?}"
            );
        }
        assert!(
            to_bytes("abc")
                .unwrap_err()
                .to_string()
                .contains("such as 256Mi")
        );
    }
}
