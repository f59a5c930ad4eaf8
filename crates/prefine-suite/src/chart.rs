//! `suite.svg` and `suite.png`: the per-family average of every variant, one group of bars per
//! (family, fraction), with ± one standard deviation over seeds as error bars.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use prefine_model::weights::write_atomic;

use crate::aggregate::Aggregate;
use crate::error::{Error, Result};

const WIDTH: u32 = 960;
const HEIGHT: u32 = 540;

/// Colours of the variants, in column order (cycled).
const PALETTE: [RGBColor; 8] = [
    RGBColor(120, 120, 120),
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
];

/// One group of bars: its label and, per variant, `(mean, std)` if present.
type Group = (String, Vec<Option<(f64, f64)>>);

fn groups(a: &Aggregate) -> Vec<Group> {
    let mut g = Vec::new();
    for fam in ["ner", "tc"] {
        for f in &a.fractions {
            let bars: Vec<Option<(f64, f64)>> = a
                .variants
                .iter()
                .map(|v| {
                    a.family
                        .get(&(f.clone(), fam.to_string(), v.clone()))
                        .map(|(s, _)| (s.mean, s.std))
                })
                .collect();
            if bars.iter().any(Option::is_some) {
                let pct = f
                    .parse::<f64>()
                    .map_or(f.clone(), |x| format!("{:.0}%", x * 100.0));
                g.push((format!("{} avg, {pct} train", fam.to_uppercase()), bars));
            }
        }
    }
    g
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    a: &Aggregate,
) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let groups = groups(a);
    let n_groups = groups.len().max(1);
    let n_vars = a.variants.len().max(1);
    let top = groups
        .iter()
        .flat_map(|g| g.1.iter().flatten())
        .map(|(m, s)| m + s)
        .fold(1.0f64, f64::max);
    let y_max = (top * 1.1).clamp(10.0, 105.0);
    let (plot, legend) = root.split_horizontally(WIDTH - 150);
    let mut chart = ChartBuilder::on(&plot)
        .caption(
            "Downstream score per family (mean over tasks, ± std over seeds)",
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..n_groups as f64, 0f64..y_max)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_x_axis()
        .y_desc("score (%)")
        .draw()?;
    let slot = 0.8 / n_vars as f64;
    for (gi, (label, bars)) in groups.iter().enumerate() {
        for (vi, bar) in bars.iter().enumerate() {
            let Some((mean, std)) = bar else { continue };
            let x0 = gi as f64 + 0.1 + vi as f64 * slot;
            let colour = PALETTE[vi % PALETTE.len()];
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x0, 0.0), (x0 + slot * 0.9, *mean)],
                colour.filled(),
            )))?;
            if *std > 0.0 {
                chart.draw_series(std::iter::once(ErrorBar::new_vertical(
                    x0 + slot * 0.45,
                    (mean - std).max(0.0),
                    *mean,
                    mean + std,
                    BLACK.stroke_width(1),
                    6,
                )))?;
            }
            chart.draw_series(std::iter::once(Text::new(
                format!("{mean:.1}"),
                (x0, mean + std + y_max * 0.045),
                ("sans-serif", 11).into_font().color(&BLACK),
            )))?;
        }
        let (px, py) = chart.backend_coord(&(gi as f64 + 0.1, 0.0));
        plot.draw(&Text::new(
            label.clone(),
            (px, py + 10),
            ("sans-serif", 14).into_font().color(&BLACK),
        ))?;
    }
    for (vi, v) in a.variants.iter().enumerate() {
        let y = 60 + vi as i32 * 24;
        let colour = PALETTE[vi % PALETTE.len()];
        legend.draw(&Rectangle::new([(10, y), (26, y + 14)], colour.filled()))?;
        let name = if a.baseline.as_deref() == Some(v.as_str()) {
            format!("{v} (baseline)")
        } else {
            v.clone()
        };
        legend.draw(&Text::new(
            name,
            (32, y),
            ("sans-serif", 14).into_font().color(&BLACK),
        ))?;
    }
    root.present()?;
    Ok(())
}

/// Writes `OUT/suite.svg` and `OUT/suite.png` (atomically).
pub fn write_charts(out: &Path, a: &Aggregate) -> Result<()> {
    prefine_train::charts::register_fonts();
    let svg_path = out.join("suite.svg");
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        draw(&root, a).map_err(|source| Error::Chart {
            path: svg_path.clone(),
            source,
        })?;
    }
    write_atomic(&svg_path, svg.as_bytes())?;

    let png_path = out.join("suite.png");
    let mut rgb = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (WIDTH, HEIGHT)).into_drawing_area();
        draw(&root, a).map_err(|source| Error::Chart {
            path: png_path.clone(),
            source,
        })?;
    }
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, WIDTH, HEIGHT);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(|e| Error::Chart {
            path: png_path.clone(),
            source: Box::new(e),
        })?;
        w.write_image_data(&rgb).map_err(|e| Error::Chart {
            path: png_path.clone(),
            source: Box::new(e),
        })?;
    }
    write_atomic(&png_path, &bytes)?;
    Ok(())
}
