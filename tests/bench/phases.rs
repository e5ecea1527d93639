//! The measured phases, one file each, as `impl Bench` blocks; [`crate::bench::Bench::phases`]
//! runs them in order. `--only overhead` runs both `overhead` (figures 2-4) and `paused`
//! (diagnostic 2b), since the diagnostic is relative to the overhead phase's baseline.

mod bulk;
mod copy;
mod cutover;
mod overhead;
mod paused;
