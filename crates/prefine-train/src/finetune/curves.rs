//! `curves.svg`: training loss per step and the dev metric per epoch.

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Error, Result};

/// Draws the two curves into an SVG file (written atomically).
pub fn write_curves(
    path: &Path,
    losses: &[(u64, f32)],
    dev: &[(u64, f64)],
    metric: &str,
) -> Result<()> {
    crate::charts::register_fonts();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 600)).into_drawing_area();
        let draw = |root: &DrawingArea<SVGBackend, plotters::coord::Shift>| -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
            root.fill(&WHITE)?;
            let (top, bottom) = root.split_vertically(300);
            let max_step = losses.last().map_or(1, |l| l.0).max(1);
            let max_loss = losses.iter().map(|l| l.1).fold(0f32, f32::max).max(1e-3);
            let mut c = ChartBuilder::on(&top)
                .caption("training loss", ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(50)
                .build_cartesian_2d(0u64..max_step, 0f32..max_loss * 1.05)?;
            c.configure_mesh().x_desc("optimizer step").draw()?;
            c.draw_series(LineSeries::new(losses.iter().copied(), &BLUE))?;
            let mut c = ChartBuilder::on(&bottom)
                .caption(format!("dev {metric}"), ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(50)
                .build_cartesian_2d(0u64..max_step, 0f64..1f64)?;
            c.configure_mesh().x_desc("optimizer step").draw()?;
            c.draw_series(LineSeries::new(dev.iter().copied(), &RED))?;
            c.draw_series(dev.iter().map(|&(x, y)| Circle::new((x, y), 4, RED.filled())))?;
            root.present()?;
            Ok(())
        };
        draw(&root).map_err(|e| Error::Chart {
            path: path.to_path_buf(),
            source: e,
        })?;
    }
    Ok(prefine_model::weights::write_atomic(path, svg.as_bytes())?)
}
