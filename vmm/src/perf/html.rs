//! The HTML report: the Markdown tables, and per benchmark and metric one SVG plot of
//! A's and B's repetitions side by side (a box from the quartiles with the median, the
//! range as whiskers, and every repetition as a dot, shifted per boot so boot-to-boot
//! differences show).

use super::report::{markdown, metric_meaning, verdict_word};
use super::{Comparison, PerfResult};
use plotters::prelude::*;
use statrs::statistics::{Data, OrderStatistics};
use std::fmt::Write;

const WIDTH: u32 = 420;
const HEIGHT: u32 = 300;
const COLOURS: [RGBColor; 2] = [RGBColor(0x1f, 0x77, 0xb4), RGBColor(0xd6, 0x27, 0x28)];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One comparison's plot as an SVG document.
fn plot(r: &PerfResult, c: &Comparison) -> Result<String, String> {
    let sides = [0, 1].map(|k| r.per_boot(c.metric, k, &c.bench));
    let all = sides.iter().flatten().flatten().copied();
    let (lo, hi) = all.fold((f64::MAX, f64::MIN), |(l, h), x| (l.min(x), h.max(x)));
    if lo > hi {
        return Err("no samples".into());
    }
    let pad = ((hi - lo) * 0.1).max(hi.abs() * 0.01).max(1e-9);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let labels = [&r.plan.kernels[0].label, &r.plan.kernels[1].label];
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{} ({})", c.bench, c.metric.name()),
                ("sans-serif", 16),
            )
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..2.0f64, (lo - pad)..(hi + pad))
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(2)
            .x_label_formatter(&|x| {
                let i = if *x < 1.0 { 0 } else { 1 };
                labels[i].to_string()
            })
            .y_desc(c.metric.unit())
            .draw()
            .map_err(|e| e.to_string())?;
        for (k, boots) in sides.iter().enumerate() {
            let colour = COLOURS[k];
            let centre = k as f64 + 0.5;
            let mut values: Vec<f64> = boots.iter().flatten().copied().collect();
            if values.is_empty() {
                continue;
            }
            values.sort_by(f64::total_cmp);
            let mut data = Data::new(values.clone());
            let (q1, q2, q3) = (data.lower_quartile(), data.median(), data.upper_quartile());
            let (min, max) = (values[0], values[values.len() - 1]);
            let w = 0.18;
            let elements: Vec<DynElement<'_, SVGBackend, (f64, f64)>> = vec![
                Rectangle::new(
                    [(centre - w, q1), (centre + w, q3)],
                    colour.mix(0.15).filled(),
                )
                .into_dyn(),
                Rectangle::new([(centre - w, q1), (centre + w, q3)], colour.stroke_width(1))
                    .into_dyn(),
                PathElement::new(
                    vec![(centre - w, q2), (centre + w, q2)],
                    colour.stroke_width(2),
                )
                .into_dyn(),
                PathElement::new(vec![(centre, min), (centre, q1)], colour.stroke_width(1))
                    .into_dyn(),
                PathElement::new(vec![(centre, q3), (centre, max)], colour.stroke_width(1))
                    .into_dyn(),
            ];
            chart.draw_series(elements).map_err(|e| e.to_string())?;
            let n = boots.len().max(1) as f64;
            chart
                .draw_series(boots.iter().enumerate().flat_map(|(i, boot)| {
                    let x = centre - w + 2.0 * w * (i as f64 + 0.5) / n;
                    boot.iter()
                        .map(move |&y| Circle::new((x, y), 2, colour.filled()))
                }))
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// The whole report as one self-contained HTML page.
pub fn report(r: &PerfResult) -> String {
    page("memrace perf", &markdown(r), &figures(r))
}

/// A self-contained HTML page: `text` (Markdown, shown as is) above `body`.
pub fn page(title: &str, text: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{}</title>\n\
         <style>body{{font-family:sans-serif;margin:1em 2em}}pre{{background:#f6f6f6;padding:1em;overflow-x:auto}}\
         figure{{display:inline-block;margin:0.5em}}figcaption{{font-size:small;text-align:center}}</style>\n\
         </head><body>\n<pre>{}</pre>\n{body}</body></html>\n",
        escape(title),
        escape(text)
    )
}

/// Per metric, what it measures and one plot per comparison.
pub fn figures(r: &PerfResult) -> String {
    let mut out = String::new();
    for &metric in &r.plan.metrics {
        let _ = writeln!(
            out,
            "<h2>{}: {}</h2>\n<p>{}</p>",
            metric.name(),
            escape(metric.unit()),
            escape(metric_meaning(metric))
        );
        for c in r.comparisons.iter().filter(|c| c.metric == metric) {
            let body = plot(r, c).unwrap_or_else(|e| format!("<p>no plot: {}</p>", escape(&e)));
            let _ = writeln!(
                out,
                "<figure>{body}<figcaption>{}: {:+.1}% ({})</figcaption></figure>",
                escape(&c.bench),
                c.change.pct,
                escape(verdict_word(c.change.verdict))
            );
        }
    }
    out
}
