//! A pipeline: an ordered chain of processors and protect stages.
//!
//! A protect stage sets aside the series matching its selectors; they skip every later
//! stage and rejoin the output untouched, bit for bit. The pipeline-level `protect` list
//! is a protect stage in first position, so protected series bypass every processor.

use crate::model::{Batch, Series};
use crate::processor::{Processor, ProcessorStats};
use crate::selector::{any_matches, Selector};

/// One stage of a pipeline.
#[derive(Debug)]
pub enum Stage {
    /// Series matching these selectors bypass every later stage.
    Protect(Vec<Selector>),
    /// A processor.
    Processor(Box<dyn Processor>),
}

/// A built pipeline.
#[derive(Debug)]
pub struct Pipeline {
    name: String,
    stages: Vec<Stage>,
    protected_series: u64,
}

impl Pipeline {
    /// Builds a pipeline from stages.
    pub fn new(name: impl Into<String>, stages: Vec<Stage>) -> Self {
        Self {
            name: name.into(),
            stages,
            protected_series: 0,
        }
    }

    /// A pipeline that passes everything through.
    pub fn passthrough(name: impl Into<String>) -> Self {
        Self::new(name, Vec::new())
    }

    /// The pipeline's name (`baseline`, `candidate`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs one batch through every stage.
    pub fn process(&mut self, batch: Batch) -> Batch {
        let mut bypass: Vec<Series> = Vec::new();
        let mut current = batch;
        for stage in &mut self.stages {
            match stage {
                Stage::Protect(selectors) => {
                    let (protected, rest): (Vec<Series>, Vec<Series>) = current
                        .series
                        .into_iter()
                        .partition(|s| any_matches(selectors, s));
                    self.protected_series += protected.len() as u64;
                    bypass.extend(protected);
                    current = Batch::new(rest);
                }
                Stage::Processor(processor) => current = processor.process(current),
            }
        }
        current.series.extend(bypass);
        current
    }

    /// Series that took a protect bypass since start.
    pub fn protected_series(&self) -> u64 {
        self.protected_series
    }

    /// `(index, kind, stats)` of each processor stage.
    pub fn processor_stats(&self) -> impl Iterator<Item = (usize, &'static str, &ProcessorStats)> {
        self.stages
            .iter()
            .enumerate()
            .filter_map(|(i, stage)| match stage {
                Stage::Processor(p) => Some((i, p.kind(), p.stats())),
                Stage::Protect(_) => None,
            })
    }

    /// Resets every processor's counts.
    pub fn reset_stats(&mut self) {
        for stage in &mut self.stages {
            if let Stage::Processor(p) = stage {
                p.reset_stats();
            }
        }
    }
}
