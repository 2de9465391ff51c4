//! What both benchmark binaries share: the closed-loop driver on
//! load-generator threads, its HTTP client, and the CPU accounting.

pub mod client;
pub mod cpu;
pub mod drive;
