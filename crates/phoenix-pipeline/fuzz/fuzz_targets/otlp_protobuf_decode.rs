//! OTLP protobuf: arbitrary bytes decoded as `ExportMetricsServiceRequest` and, when they
//! decode, converted into series (bucket arithmetic, exponential bounds, delta sums).
#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use phoenix_pipeline::model::Batch;
use phoenix_pipeline::otlp::OtlpConverter;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = ExportMetricsServiceRequest::decode(data) {
        let mut batch = Batch::default();
        OtlpConverter::new().convert(&request, &mut batch);
        // And back out through the exporter's mapping.
        let _ = phoenix_pipeline::otlp_export::series_to_requests(&batch.series, &[], 100);
    }
});
