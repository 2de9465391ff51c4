//! The `tollgate` binary's library: command-line commands, the service
//! runner (every service in one process, or any subset), and the local
//! bootstrap that `tollgate up` uses to start nats-server and PostgreSQL.

pub mod commands;
pub mod local;
pub mod services;
