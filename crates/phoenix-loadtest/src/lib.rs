//! `phoenix-load`: simulates a fleet of agents against a running `phoenix-api` (enroll, one
//! long-poll each, heartbeats, task status reports) while enqueueing tasks on a fixed schedule,
//! and reports heartbeat and enqueue→delivery latency, throughput and the API's CPU and RSS.
//!
//! Pure parts (schedules, latency statistics, `/proc` parsing, the report) are separate from
//! the I/O in [`sim`].

pub mod cli;
pub mod procfs;
pub mod report;
pub mod schedule;
pub mod sim;
pub mod stats;
pub mod ws;
