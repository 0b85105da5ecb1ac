//! `loadtest plot`: renders `--json` reports to SVG charts for the docs.
//!
//! - a ramp chart (when a report has several steps): p50 and p99 latency
//!   against the delivery rate each step reached;
//! - a percentile chart: the latency distribution of each report's last
//!   step, on an axis of "nines" (50 %, 90 %, 99 %, 99.9 %, ...).

use std::path::Path;

use plotters::prelude::*;

use crate::report::Report;

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Writes `{out}-ramp.svg` (if any report ramped) and `{out}-percentiles.svg`.
pub fn plot(reports: &[(String, Report)], out: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut written = Vec::new();
    let stem = out.with_extension("");
    let stem = stem.to_string_lossy();
    if reports.iter().any(|(_, r)| r.steps.len() > 1) {
        let path = std::path::PathBuf::from(format!("{stem}-ramp.svg"));
        ramp(reports, &path)?;
        written.push(path);
    }
    let path = std::path::PathBuf::from(format!("{stem}-percentiles.svg"));
    percentiles(reports, &path)?;
    written.push(path);
    Ok(written)
}

fn ramp(reports: &[(String, Report)], path: &Path) -> anyhow::Result<()> {
    let steps = reports.iter().flat_map(|(_, r)| r.steps.iter());
    let x_max = steps.clone().map(|s| s.deliveries_per_sec).fold(1.0, f64::max) * 1.05;
    let y_max = steps.map(|s| s.latency.p99).fold(1.0, f64::max) * 1.1;
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Latency against delivery rate", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("deliveries per second")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| format!("{:.0}k", x / 1000.0))
        .draw()?;
    for (i, (name, report)) in reports.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        for (label, dashed, pick) in [
            (
                "p50",
                true,
                (|s: &crate::report::Step| s.latency.p50) as fn(&crate::report::Step) -> f64,
            ),
            ("p99", false, |s: &crate::report::Step| s.latency.p99),
        ] {
            let points: Vec<(f64, f64)> = report
                .steps
                .iter()
                .map(|s| (s.deliveries_per_sec, pick(s)))
                .collect();
            let style = if dashed {
                color.mix(0.5).stroke_width(2)
            } else {
                color.stroke_width(2)
            };
            chart
                .draw_series(LineSeries::new(points.clone(), style))?
                .label(format!("{name} {label}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart.draw_series(points.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Quantile q as "nines": 0.9 -> 1, 0.99 -> 2, 0.999 -> 3.
fn nines(q: f64) -> f64 {
    -(1.0 - q).max(1e-9).log10()
}

fn percentiles(reports: &[(String, Report)], path: &Path) -> anyhow::Result<()> {
    let curves: Vec<(&String, &Vec<(f64, f64)>)> = reports
        .iter()
        .filter_map(|(name, r)| r.steps.last().map(|s| (name, &s.latency.curve)))
        .collect();
    let y_max = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Latency by percentile", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0f64..5.0, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_labels(6)
        .x_label_formatter(&|x| match x.round() as i32 {
            0 => "0%".into(),
            1 => "90%".into(),
            2 => "99%".into(),
            3 => "99.9%".into(),
            4 => "99.99%".into(),
            _ => "99.999%".into(),
        })
        .draw()?;
    for (i, (name, curve)) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<(f64, f64)> = curve
            .iter()
            .map(|&(q, ms)| (nines(q), ms))
            .filter(|p| p.0 <= 5.0)
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
