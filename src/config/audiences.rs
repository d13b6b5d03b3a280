//! `[[audiences]]` entries, checked: which segments go to which channel under which consent.

use super::AudienceConfig;
use crate::error::{Error, Result};

/// Where an audience goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Email,
    Ads,
}

impl Channel {
    pub fn name(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Ads => "ads",
        }
    }
}

/// One checked `[[audiences]]` entry.
#[derive(Debug, Clone)]
pub struct Audience {
    pub name: String,
    pub segmentation: String,
    pub segments: Vec<String>,
    pub channel: Channel,
    /// A boolean column of `customers`.
    pub consent: String,
}

/// Segmentations an audience may pick from: name, the table and its segment column.
pub const SEGMENTATIONS: [(&str, &str, &str); 6] = [
    ("rfm", "rfm", "segment"),
    ("lifecycle", "lifecycle", "stage"),
    ("clv", "clv", "clv_segment"),
    ("channel", "customer_facts", "acquisition_channel"),
    ("country", "customer_facts", "acquisition_country"),
    ("device", "customer_facts", "acquisition_device"),
];

/// The boolean consent columns of `customers`.
const CONSENTS: [&str; 2] = ["email_opt_in", "ads_opt_in"];

/// Checks the `[[audiences]]` entries: every key present and known, names usable as file
/// names and unique. An error names the entry (`audiences[i]`, 0-based) and the key.
pub fn from_config(entries: &[AudienceConfig]) -> Result<Vec<Audience>> {
    let mut out: Vec<Audience> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let err = |key: &str, message: String| Error::ConfigValue {
            key: format!("audiences[{i}].{key}"),
            message,
        };
        let required = |key: &str, v: &Option<String>| {
            v.clone()
                .ok_or_else(|| err(key, "missing: every [[audiences]] entry needs it".into()))
        };
        let name = required("name", &e.name)?;
        let usable = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !usable {
            return Err(err(
                "name",
                format!(
                    "`{name}` must be letters, digits, `_` and `-` (it names the upload files)"
                ),
            ));
        }
        if out.iter().any(|a| a.name == name) {
            return Err(err("name", format!("`{name}` is used by two audiences")));
        }
        let segmentation = required("segmentation", &e.segmentation)?;
        if !SEGMENTATIONS.iter().any(|(s, _, _)| *s == segmentation) {
            return Err(err(
                "segmentation",
                format!(
                    "`{segmentation}` is not a segmentation (one of: {})",
                    SEGMENTATIONS.map(|(s, _, _)| s).join(", ")
                ),
            ));
        }
        if e.segments.is_empty() {
            return Err(err(
                "segments",
                "empty: list the segments whose customers the audience holds".into(),
            ));
        }
        let channel = match required("channel", &e.channel)?.as_str() {
            "email" => Channel::Email,
            "ads" => Channel::Ads,
            other => {
                return Err(err(
                    "channel",
                    format!("`{other}` is not a channel (email or ads)"),
                ))
            }
        };
        let consent = e.consent.clone().unwrap_or_else(|| "email_opt_in".into());
        if !CONSENTS.contains(&consent.as_str()) {
            return Err(err(
                "consent",
                format!(
                    "`{consent}` is not a consent column of customers (one of: {})",
                    CONSENTS.join(", ")
                ),
            ));
        }
        out.push(Audience {
            name,
            segmentation,
            segments: e.segments.clone(),
            channel,
            consent,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, segmentation: &str, channel: &str) -> AudienceConfig {
        AudienceConfig {
            name: Some(name.into()),
            segmentation: Some(segmentation.into()),
            segments: vec!["Champions".into()],
            channel: Some(channel.into()),
            consent: None,
        }
    }

    #[test]
    fn each_broken_audience_entry_is_named_by_index_and_key() {
        let e = |entries: &[AudienceConfig]| from_config(entries).unwrap_err().to_string();
        assert!(e(&[entry("a b", "rfm", "email")]).contains("audiences[0].name"));
        assert!(e(&[entry("a", "rfm", "email"), entry("a", "rfm", "ads")])
            .contains("audiences[1].name"));
        assert!(e(&[entry("a", "rmf", "email")]).contains("audiences[0].segmentation"));
        assert!(e(&[entry("a", "rfm", "sms")]).contains("audiences[0].channel"));
        let mut no_segments = entry("a", "rfm", "email");
        no_segments.segments.clear();
        assert!(e(&[no_segments]).contains("audiences[0].segments"));
        let mut consent = entry("a", "rfm", "email");
        consent.consent = Some("newsletter".into());
        assert!(e(&[consent]).contains("audiences[0].consent"));
        let ok = from_config(&[entry("vip-1", "clv", "ads")]).unwrap();
        assert_eq!(ok[0].consent, "email_opt_in");
        assert_eq!(ok[0].channel, Channel::Ads);
    }
}
