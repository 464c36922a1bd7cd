//! Kubernetes object-name rules used for node names.

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid node name {name:?}: {reason} (node names are RFC 1123 subdomains: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters)")]
pub struct NameError {
    pub name: String,
    pub reason: &'static str,
}

/// RFC 1123 subdomain, as Kubernetes requires for Node names.
pub fn validate_node_name(name: &str) -> Result<(), NameError> {
    let fail = |reason| {
        Err(NameError {
            name: name.chars().take(80).collect(),
            reason,
        })
    };
    if name.is_empty() {
        return fail("it is empty");
    }
    if name.len() > 253 {
        return fail("it is longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return fail("each dot-separated part must be 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return fail("it contains characters other than a-z, 0-9, '-' and '.'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return fail("a part starts or ends with '-'");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        for ok in ["a", "worker-1", "n1.example.com", "node-1a2b3c4d"] {
            assert!(validate_node_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Upper",
            "-lead",
            "trail-",
            "a..b",
            "under_score",
            "sp ace",
            &"a".repeat(64),
            "ü",
        ] {
            assert!(validate_node_name(bad).is_err(), "{bad}");
        }
    }
}
