//! Rebuilds when the embedded model library or demo data change (include_dir cannot tell cargo).
fn main() {
    println!("cargo:rerun-if-changed=sql");
    println!("cargo:rerun-if-changed=fixtures/demo");
}
