//! OTLP/JSON: arbitrary bytes decoded as `ExportMetricsServiceRequest` JSON and converted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use phoenix_pipeline::model::Batch;
use phoenix_pipeline::otlp::OtlpConverter;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<ExportMetricsServiceRequest>(data) {
        let mut batch = Batch::default();
        OtlpConverter::new().convert(&request, &mut batch);
    }
});
