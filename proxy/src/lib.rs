//! Tollgate's proxy: OpenAI-compatible front for AI providers.
//!
//! `providers` turns an OpenAI Chat Completions request into the provider's own
//! request and the provider's answer (JSON or SSE) back into OpenAI's shapes,
//! measuring usage on the way; `pricing` turns that usage into exact US dollars.
//! `keys` and `project_config` hold each project's control-plane data:
//! provider keys encrypted at rest, custom providers and price overrides.

pub mod estimate;
mod h1;
pub mod hold;
pub mod keys;
pub mod media;
pub mod pricing;
pub mod project_config;
pub mod providers;
pub mod server;
pub mod upstream;
