//! Memory sizes as users write them: `512M`, `2G`, `1024` (MiB), `64K`.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizeError {
    #[error("malformed size `{0}`: write a number with an optional K, M, G or T suffix, e.g. 512M or 2G (a bare number is MiB)")]
    Malformed(String),
    #[error("size `{0}` is too large")]
    Overflow(String),
}

/// Parses a size; binary units, a bare number means MiB (as QEMU's `-m`).
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let t = text.trim();
    let malformed = || SizeError::Malformed(text.to_string());
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(malformed());
    }
    let n: u64 = digits.parse().map_err(|_| malformed())?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "M" | "MB" | "MIB" => 20,
        "K" | "KB" | "KIB" => 10,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(malformed()),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| SizeError::Overflow(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("512"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(matches!(parse_size("12XB"), Err(SizeError::Malformed(_))));
        assert!(matches!(parse_size("G"), Err(SizeError::Malformed(_))));
        assert!(matches!(parse_size(""), Err(SizeError::Malformed(_))));
        assert!(matches!(parse_size("-1M"), Err(SizeError::Malformed(_))));
        assert!(matches!(
            parse_size("99999999999T"),
            Err(SizeError::Overflow(_))
        ));
    }
}
