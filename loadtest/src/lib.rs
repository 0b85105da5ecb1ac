//! The load generator's reusable parts: the loss and duplication
//! [`checker`] (also used by the gateway's fault tests), client helpers and
//! process statistics. The `loadtest` binary drives scenarios with them.

pub mod checker;
pub mod clients;
pub mod procstat;
