//! `cargo xtask bench-render`: how long rendering every environment takes.

use std::path::Path;
use std::time::{Duration, Instant};

use clap::Args;

use crate::environment;
use crate::render::{self, context::Upstreams};

/// Time loading and rendering every environment, in memory, several times.
#[derive(Debug, Args)]
pub struct BenchRender {
    /// How many times to render all environments.
    #[arg(long, default_value_t = 50)]
    iterations: u32,
}

impl BenchRender {
    pub fn run(&self, root: &Path) -> anyhow::Result<()> {
        let names = environment::names(root)?;
        let mut samples = Vec::new();
        let mut files = 0;
        for _ in 0..self.iterations.max(1) {
            let start = Instant::now();
            files = 0;
            // Everything a `render` does but writing: read the templates and
            // every environment's files, validate, render.
            let tera = render::templates(root)?;
            for name in &names {
                let environment = environment::load(root, name)?;
                files += render::render_with(&tera, &environment, Upstreams::Deployed)?.len();
            }
            samples.push(start.elapsed());
        }
        samples.sort();
        let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "rendering {} environments ({}) into {files} files: mean {:.2} ms, min {:.2} ms, median {:.2} ms, max {:.2} ms over {} runs",
            names.len(),
            names.join(", "),
            ms(mean),
            ms(samples[0]),
            ms(samples[samples.len() / 2]),
            ms(samples[samples.len() - 1]),
            samples.len()
        );
        Ok(())
    }
}
