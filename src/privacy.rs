//! Privacy: customer ids pseudonymised as the orders are staged (`[privacy] pseudonymise`),
//! and the columns of personal data that never reach a published table unless allowed.
//!
//! A pseudonym is `lower(hex(HMAC-SHA256(key, id)))`, the key being the UTF-8 bytes of
//! `SEGFLOW_PSEUDONYM_KEY` and the id its text exactly as the source holds it (an integer
//! as its decimal text). The key is never logged nor written: a snapshot records only its
//! fingerprint, the first 16 hex digits of SHA-256(key), so that a run under another key
//! (whose ids would no longer join the history) is caught and named.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringViewBuilder};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{exec_err, Result};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The environment variable that holds the pseudonym key.
pub const KEY_ENV: &str = "SEGFLOW_PSEUDONYM_KEY";

/// Column names of personal data (compared lower-cased): a published table may carry one
/// only when `[privacy] publish_pii` lists it. `[privacy] pii_columns` adds more.
pub const PII_COLUMNS: &[&str] = &[
    "email",
    "email_address",
    "phone",
    "phone_number",
    "mobile",
    "name",
    "first_name",
    "last_name",
    "full_name",
    "address",
    "street",
    "address_line1",
    "address_line2",
    "postcode",
    "postal_code",
    "zip",
    "zip_code",
    "birth_date",
    "date_of_birth",
    "birthdate",
    "dob",
    "ip_address",
];

/// The pseudonym key: what the HMAC starts from, and its fingerprint.
#[derive(Clone)]
pub struct PseudonymKey {
    mac: Hmac<Sha256>,
    fingerprint: String,
}

impl std::fmt::Debug for PseudonymKey {
    /// The fingerprint only: the key never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PseudonymKey(fingerprint {})", self.fingerprint)
    }
}

impl PseudonymKey {
    /// The key of `text` (its UTF-8 bytes); None when it is empty.
    pub fn new(text: &str) -> Option<PseudonymKey> {
        if text.is_empty() {
            return None;
        }
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(text.as_bytes()).ok()?;
        let digest = Sha256::digest(text.as_bytes());
        Some(PseudonymKey {
            mac,
            fingerprint: hex(&digest)[..16].to_string(),
        })
    }

    /// The first 16 hex digits of SHA-256(key).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The pseudonym of `id` as lower-case hex, written into `out`.
    fn pseudonym_into(&self, id: &[u8], out: &mut [u8; 64]) {
        let mut mac = self.mac.clone();
        mac.update(id);
        hex_into(&mac.finalize().into_bytes(), out);
    }

    /// The pseudonym of `id`.
    pub fn pseudonym(&self, id: &str) -> String {
        let mut out = [0u8; 64];
        self.pseudonym_into(id.as_bytes(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// `segflow_pseudonym(id)`: the pseudonym of a string id (NULL and the empty string,
    /// a missing id, stay as they are).
    pub fn udf(&self) -> ScalarUDF {
        ScalarUDF::new_from_impl(Pseudonymise {
            key: self.clone(),
            signature: Signature::any(1, Volatility::Immutable),
        })
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_into(bytes: &[u8], out: &mut [u8; 64]) {
    for (i, b) in bytes.iter().take(32).enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 0x0f) as usize];
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .flat_map(|b| [HEX[(b >> 4) as usize], HEX[(b & 0x0f) as usize]])
        .map(char::from)
        .collect()
}

/// The bytes of hex text; None when it is not hex.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    let b = text.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    b.chunks(2)
        .map(|pair| {
            let digit = |c: u8| (c as char).to_digit(16);
            Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
        })
        .collect()
}

/// The scalar function applying a [`PseudonymKey`].
struct Pseudonymise {
    key: PseudonymKey,
    signature: Signature,
}

impl std::fmt::Debug for Pseudonymise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "segflow_pseudonym({:?})", self.key)
    }
}

impl PartialEq for Pseudonymise {
    fn eq(&self, other: &Self) -> bool {
        self.key.fingerprint == other.key.fingerprint
    }
}

impl Eq for Pseudonymise {}

impl std::hash::Hash for Pseudonymise {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key.fingerprint.hash(state);
    }
}

impl ScalarUDFImpl for Pseudonymise {
    fn name(&self) -> &str {
        "segflow_pseudonym"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8View)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let nullable = args.arg_fields.first().is_none_or(|f| f.is_nullable());
        Ok(Arc::new(Field::new(
            self.name(),
            DataType::Utf8View,
            nullable,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let Some(input) = arrays.first() else {
            return exec_err!("segflow_pseudonym takes one argument");
        };
        let ids: ArrayRef = match input.data_type() {
            DataType::Utf8View => input.clone(),
            DataType::Utf8 | DataType::LargeUtf8 => {
                datafusion::arrow::compute::cast(input, &DataType::Utf8View)?
            }
            other => return exec_err!("segflow_pseudonym: {other} is not a string type"),
        };
        let ids = ids.as_string_view();
        let mut out = StringViewBuilder::with_capacity(ids.len());
        let mut text = [0u8; 64];
        for id in ids.iter() {
            match id {
                // A missing id stays missing, for the gate that rejects such lines.
                Some("") => out.append_value(""),
                Some(id) => {
                    self.key.pseudonym_into(id.as_bytes(), &mut text);
                    // Hex digits are ASCII.
                    out.append_value(std::str::from_utf8(&text).unwrap_or_default());
                }
                None => out.append_null(),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// The erased customers (`segflow forget`): each published id (the pseudonym when ids are
/// pseudonymised) kept only as `lower(hex(HMAC-SHA256(salt, id)))`, the salt random per
/// output. A run drops every line and customer whose id hashes into the set; `forget`
/// removes their rows from the kept snapshots.
#[derive(Clone)]
pub struct ErasedIds {
    salt: Vec<u8>,
    mac: Hmac<Sha256>,
    hashes: std::collections::HashSet<[u8; 32]>,
}

impl std::fmt::Debug for ErasedIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ErasedIds({} ids)", self.hashes.len())
    }
}

impl ErasedIds {
    /// An empty set under a new random salt.
    pub fn new_salted() -> std::io::Result<ErasedIds> {
        let mut salt = vec![0u8; 32];
        getrandom::fill(&mut salt).map_err(std::io::Error::other)?;
        Ok(Self::with_salt(salt))
    }

    /// An empty set under `salt`.
    pub fn with_salt(salt: Vec<u8>) -> ErasedIds {
        // HMAC takes a key of any length.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(&salt)
            .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new_from_slice(&[0]).expect("key"));
        ErasedIds {
            salt,
            mac,
            hashes: Default::default(),
        }
    }

    pub fn salt(&self) -> &[u8] {
        &self.salt
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    fn digest(&self, id: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(id);
        mac.finalize().into_bytes().into()
    }

    /// The salted hash of a published id, as stored (lower-case hex).
    pub fn hash_hex(&self, id: &str) -> String {
        hex(&self.digest(id.as_bytes()))
    }

    /// Adds a published id; whether it was new.
    pub fn insert(&mut self, id: &str) -> bool {
        let d = self.digest(id.as_bytes());
        self.hashes.insert(d)
    }

    /// Adds a stored hash (64 hex digits); false when it is not one.
    pub fn insert_hash_hex(&mut self, text: &str) -> bool {
        match unhex(text).and_then(|b| <[u8; 32]>::try_from(b).ok()) {
            Some(d) => {
                self.hashes.insert(d);
                true
            }
            None => false,
        }
    }

    /// Every stored hash as lower-case hex, sorted.
    pub fn hashes_hex(&self) -> Vec<String> {
        let mut out: Vec<String> = self.hashes.iter().map(|d| hex(d)).collect();
        out.sort();
        out
    }

    /// Whether the published id `id` is erased (a missing id never is).
    pub fn contains(&self, id: &str) -> bool {
        !id.is_empty()
            && !self.hashes.is_empty()
            && self.hashes.contains(&self.digest(id.as_bytes()))
    }

    /// Which rows of `ids` (a string column of published ids) are erased.
    pub fn erased_rows(&self, ids: &dyn Array) -> Result<datafusion::arrow::array::BooleanArray> {
        use datafusion::arrow::array::BooleanArray;
        let ids: ArrayRef = match ids.data_type() {
            DataType::Utf8View => datafusion::arrow::array::make_array(ids.to_data()),
            _ => datafusion::arrow::compute::cast(ids, &DataType::Utf8View)?,
        };
        let ids = ids.as_string_view();
        if self.hashes.is_empty() {
            return Ok(BooleanArray::from(vec![false; ids.len()]));
        }
        // A customer's lines come in runs and repeat within a batch: each distinct id of
        // the batch is hashed once (an HMAC costs ~40 times a map lookup).
        let mut seen: std::collections::HashMap<&str, bool> = std::collections::HashMap::new();
        let mut last: Option<(&str, bool)> = None;
        let mut out = datafusion::arrow::array::BooleanBuilder::with_capacity(ids.len());
        for id in ids.iter() {
            let erased = match id {
                None => false,
                Some(id) => match last {
                    Some((l, e)) if l == id => e,
                    _ => {
                        let e = *seen.entry(id).or_insert_with(|| self.contains(id));
                        last = Some((id, e));
                        e
                    }
                },
            };
            out.append_value(erased);
        }
        Ok(out.finish())
    }

    /// `segflow_erased(customer_id)`: true for an erased id (never NULL).
    pub fn udf(self: &Arc<Self>) -> ScalarUDF {
        ScalarUDF::new_from_impl(Erased {
            ids: self.clone(),
            signature: Signature::any(1, Volatility::Immutable),
        })
    }
}

/// The scalar function testing ids against [`ErasedIds`].
struct Erased {
    ids: Arc<ErasedIds>,
    signature: Signature,
}

impl std::fmt::Debug for Erased {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "segflow_erased({:?})", self.ids)
    }
}

impl PartialEq for Erased {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.ids, &other.ids)
    }
}

impl Eq for Erased {}

impl std::hash::Hash for Erased {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.ids.salt.hash(state);
        self.ids.hashes.len().hash(state);
    }
}

impl ScalarUDFImpl for Erased {
    fn name(&self) -> &str {
        "segflow_erased"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn return_field_from_args(&self, _args: ReturnFieldArgs) -> Result<FieldRef> {
        Ok(Arc::new(Field::new(self.name(), DataType::Boolean, false)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let Some(input) = arrays.first() else {
            return exec_err!("segflow_erased takes one argument");
        };
        Ok(ColumnarValue::Array(Arc::new(self.ids.erased_rows(input)?)))
    }
}

/// `df` without the rows whose `customer_id` is erased.
pub fn without_erased(
    ids: &Arc<ErasedIds>,
    df: datafusion::prelude::DataFrame,
) -> Result<datafusion::prelude::DataFrame> {
    use datafusion::logical_expr::{col, not};
    df.filter(not(ids.udf().call(vec![col("customer_id")])))
}

/// `expr` (a customer id as text) pseudonymised under `key`.
pub fn pseudonymised(key: &PseudonymKey, expr: Expr) -> Expr {
    key.udf().call(vec![expr])
}

/// Whether `column` names personal data: the built-in list or `extra` (both compared
/// lower-cased).
pub fn is_pii(column: &str, extra: &[String]) -> bool {
    let c = column.to_lowercase();
    PII_COLUMNS.contains(&c.as_str()) || extra.iter().any(|e| e.to_lowercase() == c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pseudonym_is_the_rfc_4231_hmac_sha256_in_lower_hex() {
        // RFC 4231, test case 2: key "Jefe", data "what do ya want for nothing?".
        let key = PseudonymKey::new("Jefe").unwrap();
        assert_eq!(
            key.pseudonym("what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // The fingerprint: the first 16 hex digits of `printf Jefe | sha256sum`.
        assert_eq!(key.fingerprint(), "005725b48609c45e");
        assert!(!format!("{key:?}").contains("Jefe"));
        assert!(PseudonymKey::new("").is_none());
    }

    #[test]
    fn ids_are_hashed_exactly_as_given() {
        let key = PseudonymKey::new("k").unwrap();
        assert_ne!(key.pseudonym("007"), key.pseudonym("7"));
        assert_ne!(key.pseudonym(" 7"), key.pseudonym("7"));
    }

    #[test]
    fn erased_ids_are_matched_by_their_salted_hash_only() {
        let mut erased = ErasedIds::with_salt(b"salt".to_vec());
        assert!(!erased.contains("42"));
        assert!(erased.insert("42"));
        assert!(!erased.insert("42"));
        assert!(erased.contains("42"));
        assert!(!erased.contains("042") && !erased.contains("") && !erased.contains("4"));
        // The stored form is HMAC-SHA256(salt, id): `printf 42 | openssl dgst -sha256 -hmac salt`.
        let stored = erased.hashes_hex();
        assert_eq!(
            stored,
            vec!["98c2d78e000f17f1958ac5ae7ca5293f16a4dcdf996afc0253bcd8accac9c6a2".to_string()]
        );
        let mut reread = ErasedIds::with_salt(b"salt".to_vec());
        assert!(reread.insert_hash_hex(&stored[0]));
        assert!(reread.contains("42"));
        assert!(!reread.insert_hash_hex("xyz"));
        // Another salt: another hash.
        let other = ErasedIds::with_salt(b"pepper".to_vec());
        assert_ne!(other.hash_hex("42"), stored[0]);
    }

    #[test]
    fn pii_names_are_matched_case_insensitively() {
        assert!(is_pii("Email", &[]));
        assert!(is_pii("loyalty_card", &["LOYALTY_CARD".into()]));
        assert!(!is_pii("email_opt_in", &[]));
        assert!(!is_pii("customer_id", &[]));
    }
}
