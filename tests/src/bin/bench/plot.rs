//! The report's plots, as SVG (plotters): latency percentile curves and throughput over time.

use plotters::prelude::*;
use std::path::Path;

const COLORS: [RGBColor; 8] = [
    RGBColor(20, 50, 74),
    RGBColor(27, 110, 58),
    RGBColor(161, 92, 0),
    RGBColor(170, 17, 17),
    RGBColor(22, 119, 255),
    RGBColor(120, 60, 160),
    RGBColor(0, 140, 140),
    RGBColor(110, 110, 110),
];

/// The percentiles a curve is drawn at: denser towards the tail.
fn percentiles() -> Vec<f64> {
    let mut p: Vec<f64> = (0..90).map(|i| i as f64).collect();
    p.extend((0..90).map(|i| 90.0 + i as f64 / 10.0));
    p.extend((0..10).map(|i| 99.0 + i as f64 / 10.0));
    p
}

/// One curve per series: latency (ms, log scale) at each percentile.
pub fn latency(path: &Path, title: &str, series: &[(String, Vec<f64>)]) -> Result<(), String> {
    let max = series
        .iter()
        .filter_map(|(_, l)| l.last().copied())
        .fold(1.0_f64, f64::max)
        * 1.2;
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..100.0, (0.1..max).log_scale())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (name, sorted)) in series.iter().enumerate() {
        if sorted.is_empty() {
            continue;
        }
        let color = COLORS[i % COLORS.len()];
        let points = percentiles().into_iter().map(|p| {
            let idx = ((sorted.len() as f64 - 1.0) * p / 100.0).round() as usize;
            (p, sorted[idx].max(0.1))
        });
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// One line per series: completions per second, second by second.
pub fn throughput(path: &Path, title: &str, series: &[(String, Vec<f64>)]) -> Result<(), String> {
    let secs = series.iter().map(|(_, s)| s.len()).max().unwrap_or(1) as f64;
    let max = series
        .iter()
        .flat_map(|(_, s)| s.iter().copied())
        .fold(1.0_f64, f64::max)
        * 1.15;
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..secs, 0.0..max)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("second of the run")
        .y_desc("purchases / s")
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (name, per_second)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points = per_second
            .iter()
            .enumerate()
            .map(|(s, v)| (s as f64 + 0.5, *v));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}
