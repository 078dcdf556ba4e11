//! Prometheus text format / OpenMetrics: arbitrary UTF-8 parsed, then turned into series
//! with target labels the way a scrape does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phoenix_pipeline::model::Interner;
use phoenix_pipeline::scrape::{parse_exposition, series_from_scrape};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(parsed) = parse_exposition(text) {
        let target = vec![("job".to_string(), "fuzz".to_string())];
        let _ = series_from_scrape(parsed, &target, false, 0, &mut Interner::new());
    }
});
