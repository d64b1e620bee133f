//! Resource quantities ("100m", "1.5Gi", "2e3") as integers, the way
//! upstream's `resource.Quantity` reads them: `milli_value` for cpu,
//! `value` for everything else, both rounded up so a request is never
//! under-counted.

/// `Some(value * 1000)` of a quantity string, rounded up; None when it does
/// not parse.
pub fn parse_milli(s: &str) -> Option<i64> {
    parse_scaled(s, 1000)
}

/// `Some(value)` of a quantity string, rounded up; None when it does not
/// parse.
pub fn parse_value(s: &str) -> Option<i64> {
    parse_scaled(s, 1)
}

fn parse_scaled(s: &str, scale: i128) -> Option<i64> {
    let s = s.trim();
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let num_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (num, suffix) = body.split_at(num_end);
    if num.is_empty() || num == "." || num.matches('.').count() > 1 {
        return None;
    }
    let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
    // Mantissa as an integer and the power of ten it is divided by.
    let digits = format!("{int_part}{frac_part}");
    if digits.len() > 30 {
        return None;
    }
    let mantissa: i128 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    let mut div_pow10 = frac_part.len() as i32;
    let (mut mul_pow10, mut mul_pow2) = (0i32, 0i32);
    match suffix {
        "" => {}
        "n" => div_pow10 += 9,
        "u" => div_pow10 += 6,
        "m" => div_pow10 += 3,
        "k" => mul_pow10 = 3,
        "M" => mul_pow10 = 6,
        "G" => mul_pow10 = 9,
        "T" => mul_pow10 = 12,
        "P" => mul_pow10 = 15,
        "E" => mul_pow10 = 18,
        "Ki" => mul_pow2 = 10,
        "Mi" => mul_pow2 = 20,
        "Gi" => mul_pow2 = 30,
        "Ti" => mul_pow2 = 40,
        "Pi" => mul_pow2 = 50,
        "Ei" => mul_pow2 = 60,
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..].parse().ok()?;
            if exp.abs() > 30 {
                return None;
            }
            if exp >= 0 {
                mul_pow10 = exp;
            } else {
                div_pow10 += -exp;
            }
        }
        _ => return None,
    }
    // value * scale = mantissa * 10^mul * 2^mul2 * scale / 10^div, ceil.
    let mut numer = mantissa.checked_mul(scale)?;
    numer = numer.checked_mul(pow(10, mul_pow10)?)?;
    numer = numer.checked_mul(pow(2, mul_pow2)?)?;
    let denom = pow(10, div_pow10)?;
    let mut v = numer / denom;
    if numer % denom != 0 {
        v += 1;
    }
    let v = if neg { -v } else { v };
    i64::try_from(v).ok()
}

fn pow(base: i128, exp: i32) -> Option<i128> {
    base.checked_pow(u32::try_from(exp).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities_read_as_millicores() {
        assert_eq!(parse_milli("100m"), Some(100));
        assert_eq!(parse_milli("1"), Some(1000));
        assert_eq!(parse_milli("1.5"), Some(1500));
        assert_eq!(parse_milli("0.0001"), Some(1), "rounded up");
        assert_eq!(parse_milli("2k"), Some(2_000_000));
    }

    #[test]
    fn memory_quantities_read_as_bytes() {
        assert_eq!(parse_value("1Gi"), Some(1 << 30));
        assert_eq!(parse_value("128Mi"), Some(128 << 20));
        assert_eq!(parse_value("1G"), Some(1_000_000_000));
        assert_eq!(parse_value("1.5Ki"), Some(1536));
        assert_eq!(parse_value("12e3"), Some(12_000));
        assert_eq!(parse_value("110"), Some(110));
        assert_eq!(
            parse_value("500m"),
            Some(1),
            "a fraction of a byte rounds up"
        );
    }

    #[test]
    fn garbage_does_not_parse() {
        for s in ["", "abc", "1x", "1..2", "Gi", "."] {
            assert_eq!(parse_value(s), None, "{s:?}");
        }
    }
}
