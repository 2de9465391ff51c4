//! Tollgate's proxy: OpenAI-compatible front for AI providers.
//!
//! `providers` turns an OpenAI Chat Completions request into the provider's own
//! request and the provider's answer (JSON or SSE) back into OpenAI's shapes,
//! measuring usage on the way; `pricing` turns that usage into exact US dollars.

pub mod pricing;
pub mod providers;
