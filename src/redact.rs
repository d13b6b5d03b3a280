//! Secrets stay in the process: [`redact`] scrubs every credential value the environment
//! holds, and the credential parameters of signed URLs, from the text segflow prints or logs.

use std::sync::OnceLock;

/// Environment variables whose values are credentials.
const SECRET_VARS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_TOKEN",
    "AZURE_CLIENT_SECRET",
];

/// Query parameters of signed URLs whose values are credentials.
const SIGNED_PARAMS: &[&str] = &[
    "X-Amz-Credential=",
    "X-Amz-Signature=",
    "X-Amz-Security-Token=",
    "sig=",
    "X-Goog-Signature=",
    "X-Goog-Credential=",
];

fn secrets() -> &'static [String] {
    static SECRETS: OnceLock<Vec<String>> = OnceLock::new();
    SECRETS.get_or_init(|| {
        let mut s: Vec<String> = SECRET_VARS
            .iter()
            .filter_map(|v| std::env::var(v).ok())
            // Very short values would mask ordinary words; real credentials are long.
            .filter(|v| v.len() >= 4)
            .collect();
        s.sort_by_key(|v| std::cmp::Reverse(v.len()));
        s
    })
}

/// Replaces every credential value of the environment, and the values of signed-URL
/// parameters, with `***`.
pub fn redact(text: &str) -> String {
    let mut out = text.to_string();
    for s in secrets() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    for p in SIGNED_PARAMS {
        let mut from = 0;
        while let Some(i) = out[from..].find(p) {
            let start = from + i + p.len();
            let end = out[start..]
                .find(|c: char| c == '&' || c == '"' || c == '\'' || c.is_whitespace())
                .map(|e| start + e)
                .unwrap_or(out.len());
            out.replace_range(start..end, "***");
            from = start + 3;
        }
    }
    out
}

/// A writer that redacts credentials from everything written through it (log output).
pub struct RedactingWriter<W: std::io::Write>(pub W);

impl<W: std::io::Write> std::io::Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0.write_all(redact(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_url_parameters_are_redacted() {
        let s = redact("GET https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIAXX%2F2026&X-Amz-Signature=abcdef failed");
        assert!(!s.contains("AKIAXX") && !s.contains("abcdef"), "{s}");
        assert!(s.contains("X-Amz-Signature=*** failed"), "{s}");
    }
}
