//! `metrics.png`: reward, KL and the rollout harmful-compliance / over-refusal rates over steps,
//! drawn with plotters (no Python). Text needs a TrueType font: the first of a few common system
//! fonts found is used; without one the panels are drawn without labels.

use anyhow::{Context, Result};
use plotters::prelude::*;
use std::path::Path;

const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/Library/Fonts/Arial.ttf",
];

fn register_font() -> bool {
    for p in FONT_CANDIDATES {
        if let Ok(bytes) = std::fs::read(p) {
            // plotters keeps the font for the life of the process
            let leaked: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, leaked).is_ok() {
                return true;
            }
        }
    }
    false
}

/// (metric key, colour, points)
type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

fn series(lines: &[serde_json::Value], key: &str) -> Vec<(f64, f64)> {
    lines
        .iter()
        .filter_map(|v| Some((v["step"].as_f64()?, v[key].as_f64()?)))
        .filter(|(_, y)| y.is_finite())
        .collect()
}

pub fn plot_metrics(metrics: &Path, png: &Path) -> Result<()> {
    let text = std::fs::read_to_string(metrics)
        .with_context(|| format!("cannot read {}", metrics.display()))?;
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    anyhow::ensure!(
        !lines.is_empty(),
        "{}: no metrics to plot",
        metrics.display()
    );
    let has_font = register_font();
    let root = BitMapBackend::new(png, (1200, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let panels = root.split_evenly((1, 3));
    let specs: [(&str, &[(&str, RGBColor)]); 3] = [
        ("reward (mean)", &[("reward_mean", BLUE)]),
        ("KL to reference", &[("kl", RED)]),
        (
            "rollout rates",
            &[
                ("rollout_harmful_compliance", RED),
                ("rollout_over_refusal", BLUE),
            ],
        ),
    ];
    let max_step = lines
        .iter()
        .filter_map(|v| v["step"].as_f64())
        .fold(1.0, f64::max);
    for (area, (title, keys)) in panels.iter().zip(specs) {
        let data: Vec<Series> = keys
            .iter()
            .map(|(k, c)| (*k, *c, series(&lines, k)))
            .collect();
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for (_, _, s) in &data {
            for &(_, y) in s {
                lo = lo.min(y);
                hi = hi.max(y);
            }
        }
        if !lo.is_finite() {
            continue;
        }
        if hi - lo < 1e-9 {
            hi = lo + 1.0;
        }
        let pad = 0.05 * (hi - lo);
        let mut builder = ChartBuilder::on(area);
        builder.margin(12);
        if has_font {
            builder
                .caption(title, ("sans-serif", 18))
                .x_label_area_size(30)
                .y_label_area_size(50);
        }
        let mut chart = builder
            .build_cartesian_2d(0.0..max_step, (lo - pad)..(hi + pad))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if has_font {
            chart
                .configure_mesh()
                .x_desc("step")
                .draw()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        for (key, color, s) in data {
            let drawn = chart
                .draw_series(LineSeries::new(s, color.stroke_width(2)))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if has_font {
                drawn
                    .label(key)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            }
        }
        if has_font && keys.len() > 1 {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    root.present()
        .map_err(|e| anyhow::anyhow!("{}: {e}", png.display()))?;
    Ok(())
}
