//! Transitional alias: the helpers that lived here are now
//! `tests/support/api.rs`. New test files write `use support::api::*;`
//! (and no `mod common;`); this file only keeps older ones compiling and goes
//! once none is left.

#[allow(unused_imports)]
pub use crate::support::api::*;
