//! Channel-name patterns, as used in token claims (`"channels": ["chat:*"]`).
//!
//! `*` matches any run of characters (including none, and including `:`),
//! `?` exactly one character; everything else matches itself. Matching is
//! iterative (no recursion, no backtracking explosion): O(pattern × name)
//! at worst, linear in practice.

/// True when `name` matches `pattern`.
pub fn matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    // Where the last `*` was, and where in `name` it started matching.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        // The wildcard test comes first: a `*` in the pattern is never a
        // literal, even where the name has a `*` too.
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && (p[pi] == b'?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if let Some((star_pi, star_ni)) = star {
            // Let the last `*` swallow one more character and retry.
            pi = star_pi + 1;
            ni = star_ni + 1;
            star = Some((star_pi, star_ni + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// True when any of `patterns` matches `name`.
pub fn any_matches<S: AsRef<str>>(patterns: &[S], name: &str) -> bool {
    patterns.iter().any(|p| matches(p.as_ref(), name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_documented() {
        let cases = [
            ("news", "news", true),
            ("news", "news2", false),
            ("chat:*", "chat:room-1", true),
            ("chat:*", "chat:", true),
            ("chat:*", "chatter", false),
            ("*", "anything:at/all", true),
            ("*:public", "chat:public", true),
            ("*:public", "chat:private", false),
            ("room-?", "room-7", true),
            ("room-?", "room-77", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("**", "", true),
            ("", "", true),
            ("", "x", false),
            ("user#*", "user#42", true),
            // Found by the fuzzer: a `*` in the name must not eat the pattern's.
            ("*a*a", "a**a", true),
            ("*b", "*b", true),
        ];
        for (pattern, name, expected) in cases {
            assert_eq!(matches(pattern, name), expected, "{pattern} ~ {name}");
        }
        assert!(any_matches(&["x", "chat:*"], "chat:1"));
        assert!(!any_matches::<&str>(&[], "chat:1"));
    }

    #[test]
    fn pathological_patterns_terminate() {
        // Exponential for a naive recursive matcher; quadratic at worst here.
        let name = "a".repeat(255);
        let pattern = format!("{}b", "*a".repeat(100));
        assert!(!matches(&pattern, &name));
        assert!(matches(&format!("{}a", "*a".repeat(100)), &name));
    }
}
