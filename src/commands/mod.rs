//! The commands of the `segflow` binary, one module each.

pub mod check;
pub mod docs;
pub mod generate;
pub mod init;
pub mod inspect;
pub mod run;
