//! Kubernetes resource quantities (`500m`, `2`, `128Mi`, `1.5G`) as
//! integers, for the scheduler's sums and the kubelet's cgroup settings.
//! k8s-openapi's `Quantity` is only the string; rk3s needs arithmetic.

/// A Kubernetes quantity in thousandths (`500m` → 500, `2` → 2000,
/// `128Mi` → 134217728000). `None` for what it cannot read.
pub fn milli(q: &str) -> Option<i128> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    // Below a thousandth (the metrics API's nanocores): rounded down.
    let divisor: i128 = match suffix {
        "n" => 1_000_000,
        "u" => 1_000,
        _ => 1,
    };
    if divisor > 1 {
        let whole: i128 = num.split_once('.').map_or(num, |(i, _)| i).parse().ok()?;
        return Some(whole / divisor);
    }
    let factor: i128 = match suffix {
        "" => 1000,
        "m" => 1,
        "k" => 1000 * 1000,
        "M" => 1000 * 1_000_000,
        "G" => 1000 * 1_000_000_000,
        "T" => 1000 * 1_000_000_000_000,
        "Ki" => 1000 * 1024,
        "Mi" => 1000 * 1024 * 1024,
        "Gi" => 1000 * 1024 * 1024 * 1024,
        "Ti" => 1000 * 1024 * 1024 * 1024 * 1024,
        _ => return None,
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let int: i128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut value = int.checked_mul(factor)?;
    if !frac.is_empty() {
        let digits = frac.len().min(9) as u32;
        let f: i128 = frac[..digits as usize].parse().ok()?;
        value += f * factor / 10i128.pow(digits);
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::milli;

    #[test]
    fn quantities_in_thousandths() {
        assert_eq!(milli("500m"), Some(500));
        assert_eq!(milli("2"), Some(2000));
        assert_eq!(milli("1.5"), Some(1500));
        assert_eq!(milli("128Mi"), Some(128 * 1024 * 1024 * 1000));
        assert_eq!(milli("1G"), Some(1_000_000_000_000));
        assert_eq!(milli("lots"), None);
        assert_eq!(milli("1500000n"), Some(1));
        assert_eq!(milli("250000u"), Some(250));
    }
}
