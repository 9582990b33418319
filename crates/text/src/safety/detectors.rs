//! The built-in detectors for sensitive data: a regex per format, each with a validator that
//! looks at the candidate and its context (Luhn, mod-97, issuer prefixes, words before it).

use super::Kind;

/// Checks a candidate span (span, whole text, span start): Luhn, mod-97, context...
pub(super) type Validator = fn(&str, &str, usize) -> bool;

/// The built-in rules, in the order they are reported when two start at the same byte.
pub(super) fn builtin() -> Vec<(Kind, &'static str, Validator)> {
    vec![
        (Kind::Card, r"\b(?:\d[ -]?){11,18}\d\b", valid_card),
        (Kind::Iban, r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b", valid_iban),
        (
            Kind::Email,
            r"\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}\b",
            always,
        ),
        (
            Kind::Phone,
            r"(?:\+|\b00)\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}\b|\(\d{2,5}\)[ .-]?\d{3,4}[ .-]?\d{3,4}\b|\b0\d{1,4}[ /.-]?\d{2,4}(?:[ .-]?\d{2,4}){1,3}\b|\b\d{3}[ .-]\d{3}[ .-]\d{4}\b",
            valid_phone,
        ),
        (Kind::Ip, r"\b(?:\d{1,3}\.){3}\d{1,3}\b", valid_ipv4),
        (Kind::Ip, r"(?i)(?:[0-9a-f]{0,4}:){2,7}(?:[0-9a-f]{1,4}|:)(?:%[0-9a-z]+)?", valid_ipv6),
        (Kind::Ssn, r"\b\d{3}-\d{2}-\d{4}\b", valid_ssn),
        (Kind::AwsKey, r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b", always),
        // The secret access key that goes with an access key id: 40 characters of base64,
        // recognised by the name it is given in credentials files and environments.
        (
            Kind::AwsKey,
            r#"(?i)\b(?:aws[_-]?secret[_-]?(?:access[_-]?)?key|secret[_-]?access[_-]?key)["']?\s*[:=]\s*["']?[A-Za-z0-9/+]{40}"#,
            valid_aws_secret,
        ),
        // PEM (RSA, EC, OPENSSH, ENCRYPTED...) and PGP private key blocks: the header, and the
        // body that follows it up to the END line when there is one, so that redaction (when
        // configured) removes the key material too.
        (
            Kind::PrivateKey,
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----(?:\s+(?:(?:Version|Comment|Hash|Charset|Proc-Type|DEK-Info): [^\r\n]{0,80}?|[A-Za-z0-9+/=]{16,}))*(?:\s*-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----)?",
            always,
        ),
        (Kind::Jwt, r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}", always),
        (
            Kind::Secret,
            r#"(?i)\b(?:api[_-]?key|secret(?:[_-]?key)?|access[_-]?token|auth[_-]?token|token|passw(?:or)?d|pwd)\s*[:=]\s*["']?[^\s"',;]{6,}"#,
            valid_secret,
        ),
    ]
}

pub(super) fn always(_: &str, _: &str, _: usize) -> bool {
    true
}

fn digits(s: &str) -> impl Iterator<Item = u32> + '_ {
    s.chars().filter_map(|c| c.to_digit(10))
}

pub fn luhn_valid(number: &str) -> bool {
    let ds: Vec<u32> = digits(number).collect();
    if ds.len() < 12 {
        return false;
    }
    let sum: u32 = ds
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| if i % 2 == 1 { if d * 2 > 9 { d * 2 - 9 } else { d * 2 } } else { d })
        .sum();
    sum.is_multiple_of(10)
}

/// Known issuer prefixes and lengths (Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay,
/// Maestro).
fn card_issuer_known(ds: &str) -> bool {
    let n = ds.len();
    let p = |k: usize| ds[..k.min(n)].parse::<u32>().unwrap_or(0);
    (ds.starts_with('4') && matches!(n, 13 | 16 | 19))
        || ((51..=55).contains(&p(2)) || (2221..=2720).contains(&p(4))) && n == 16
        || matches!(p(2), 34 | 37) && n == 15
        || (ds.starts_with("6011") || ds.starts_with("65") || (644..=649).contains(&p(3))) && (16..=19).contains(&n)
        || (3528..=3589).contains(&p(4)) && (16..=19).contains(&n)
        || (matches!(p(2), 36 | 38) || (300..=305).contains(&p(3))) && (14..=19).contains(&n)
        || ds.starts_with("62") && (16..=19).contains(&n)
        || (ds.starts_with("50") || (56..=69).contains(&p(2))) && (12..=19).contains(&n)
}

fn valid_card(span: &str, _: &str, _: usize) -> bool {
    let ds: String = span.chars().filter(char::is_ascii_digit).collect();
    // Separators, when used, must be consistent (all spaces or all dashes).
    let has_space = span.contains(' ');
    let has_dash = span.contains('-');
    !(has_space && has_dash) && card_issuer_known(&ds) && luhn_valid(&ds)
}

pub fn iban_valid(span: &str) -> bool {
    let compact: String = span.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_uppercase();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let rearranged = format!("{}{}", &compact[4..], &compact[..4]);
    let mut remainder: u32 = 0;
    for c in rearranged.chars() {
        let value = match c {
            '0'..='9' => c as u32 - '0' as u32,
            'A'..='Z' => c as u32 - 'A' as u32 + 10,
            _ => return false,
        };
        remainder = if value >= 10 { (remainder * 100 + value) % 97 } else { (remainder * 10 + value) % 97 };
    }
    remainder == 1
}

fn valid_iban(span: &str, _: &str, _: usize) -> bool {
    iban_valid(span)
}

fn valid_ssn(span: &str, _: &str, _: usize) -> bool {
    let parts: Vec<&str> = span.split('-').collect();
    let [area, group, serial] = parts[..] else { return false };
    area != "000" && area != "666" && !area.starts_with('9') && group != "00" && serial != "0000"
}

fn preceding(text: &str, start: usize, window: usize) -> &str {
    let mut from = start.saturating_sub(window);
    while !text.is_char_boundary(from) {
        from -= 1;
    }
    &text[from..start]
}

fn valid_phone(span: &str, text: &str, start: usize) -> bool {
    let n = digits(span).count();
    if !(7..=15).contains(&n) {
        return false;
    }
    // Dates (03.04.2014) and SSN-shaped numbers (123-45-6789) are not phone numbers.
    let groups: Vec<usize> = span.split(|c: char| !c.is_ascii_digit()).map(str::len).filter(|l| *l > 0).collect();
    if matches!(groups[..], [1 | 2, 1 | 2, 2 | 4] | [4, 1 | 2, 1 | 2] | [3, 2, 4]) {
        return false;
    }
    let before = preceding(text, start, 24).to_ascii_lowercase();
    if ["isbn", "serial", "sn", "order", "invoice", "version", "ref", "tracking"].iter().any(|w| before.contains(w)) {
        return false;
    }
    let international = span.starts_with('+') || span.starts_with("00");
    let national = span.starts_with('0') || span.starts_with('(');
    let context =
        ["call", "phone", "tel", "mobile", "cell", "fax", "contact", "reach", "text me", "number", "ring", "whatsapp"]
            .iter()
            .any(|w| before.contains(w));
    international || national || context
}

fn valid_ipv4(span: &str, text: &str, start: usize) -> bool {
    let before = preceding(text, start, 10).to_ascii_lowercase();
    !(before.ends_with('v') || before.contains("version") || before.ends_with("ver "))
        && span.parse::<std::net::Ipv4Addr>().is_ok()
}

fn valid_ipv6(span: &str, _: &str, _: usize) -> bool {
    span.matches(':').count() >= 2 && span.parse::<std::net::Ipv6Addr>().is_ok()
}

fn valid_secret(span: &str, _: &str, _: usize) -> bool {
    let lower = span.to_ascii_lowercase();
    !["redacted", "changeme!", "********", "<secret>", "xxxxxxxx", "your_api_key", "placeholder"]
        .iter()
        .any(|p| lower.contains(p))
}

/// A secret access key is exactly 40 characters: one followed by more base64 is something else.
fn valid_aws_secret(span: &str, text: &str, start: usize) -> bool {
    let next = text[start + span.len()..].chars().next();
    !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '/' || c == '+') && valid_secret(span, text, start)
}
