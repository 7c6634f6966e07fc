//! Detectors run on every finished span before sampling: what they find
//! is written onto the spans (attributes, events) and counted in metrics.
pub mod nplusone;
pub mod slow;
