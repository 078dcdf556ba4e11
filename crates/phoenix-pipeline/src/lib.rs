//! Phoenix's data-plane engine: the series model, the Prometheus remote write codec,
//! selectors and relabeling, the processors that reduce cardinality, pipelines and their
//! configuration, the load simulator, and at the edges the HTTP receivers, exporters, the
//! shadow A/B engine and the standalone agent wiring.
//!
//! Pure logic (model, codec, processors, simulator, KPIs) does no I/O and is tested with
//! unit and property tests; receivers and exporters sit at the edges.

pub mod agent;
pub mod config;
pub mod engine;
pub mod exporter;
pub mod kpi;
pub mod labelstats;
pub mod model;
pub mod otelcol;
pub mod otlp;
pub mod otlp_export;
pub mod pipeline;
pub mod processor;
pub mod receiver;
pub mod relabel;
pub mod remote_write;
pub mod scrape;
pub mod seen;
pub mod selector;
pub mod simulator;
pub mod telemetry;
pub mod templates;
