//! The `idem` binary's library half: configuration and wiring, so that tests (and applications that
//! embed idem) start exactly what `idem serve` starts.

pub mod app;
pub mod config;
pub mod telemetry;
