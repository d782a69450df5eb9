//! `OUT/loss.svg`: the loss curve, drawn by hand (no plotting dependency).
//!
//! In: the metrics records. Out: an SVG with the training loss per step (faint), its
//! running average (solid), and the eval loss where it was measured (dots), on axes
//! with round-number ticks.

use super::metrics::Record;
use std::fmt::Write;
use std::path::{Path, PathBuf};

pub const PLOT_FILE: &str = "loss.svg";

const W: f64 = 720.0;
const H: f64 = 420.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 48.0;

/// Writes the plot of `records` into `dir` atomically.
pub fn write(dir: &Path, records: &[Record]) -> anyhow::Result<PathBuf> {
    let path = dir.join(PLOT_FILE);
    crate::fsutil::write_bytes_atomic(&path, loss_svg(records).as_bytes())
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(path)
}

/// The SVG text.
pub fn loss_svg(records: &[Record]) -> String {
    let train: Vec<(f64, f64)> =
        records.iter().filter_map(|r| r.loss.filter(|l| l.is_finite()).map(|l| (r.step as f64, l as f64))).collect();
    let eval: Vec<(f64, f64)> =
        records.iter().filter_map(|r| r.eval_loss.filter(|l| l.is_finite()).map(|l| (r.step as f64, l))).collect();
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(svg, r#"<text x="{LEFT}" y="22" font-size="14">neft train: loss per step</text>"#);
    if train.is_empty() && eval.is_empty() {
        let _ = writeln!(svg, r#"<text x="{}" y="{}">no finite loss yet</text>"#, W / 2.0 - 50.0, H / 2.0);
        svg.push_str("</svg>\n");
        return svg;
    }
    let all = train.iter().chain(&eval);
    let (x0, x1) = span(all.clone().map(|p| p.0));
    let (y0, y1) = span(all.map(|p| p.1));
    let (xt, yt) = (ticks(x0, x1), ticks(y0, y1));
    let (x0, x1) = (x0.min(xt[0]), x1.max(*xt.last().unwrap()));
    let (y0, y1) = (y0.min(yt[0]), y1.max(*yt.last().unwrap()));
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT);
    let sy = |y: f64| H - BOTTOM - (y - y0) / (y1 - y0) * (H - TOP - BOTTOM);
    axes(&mut svg, &xt, &yt, &sx, &sy);
    let line = |pts: &[(f64, f64)]| pts.iter().map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y))).collect::<Vec<_>>();
    let _ = writeln!(
        svg,
        r##"<polyline fill="none" stroke="#9ecae1" stroke-width="1" points="{}"/>"##,
        line(&train).join(" ")
    );
    let _ = writeln!(
        svg,
        r##"<polyline fill="none" stroke="#08519c" stroke-width="2" points="{}"/>"##,
        line(&running_mean(&train)).join(" ")
    );
    for (x, y) in &eval {
        let _ = writeln!(svg, r##"<circle cx="{:.1}" cy="{:.1}" r="4" fill="#d94801"/>"##, sx(*x), sy(*y));
    }
    legend(&mut svg, !eval.is_empty());
    svg.push_str("</svg>\n");
    svg
}

fn axes(svg: &mut String, xt: &[f64], yt: &[f64], sx: &dyn Fn(f64) -> f64, sy: &dyn Fn(f64) -> f64) {
    let (bottom, right) = (H - BOTTOM, W - RIGHT);
    for &y in yt {
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" x2="{right}" y1="{0:.1}" y2="{0:.1}" stroke="#eee"/><text x="{1}" y="{2:.1}" text-anchor="end">{3}</text>"##,
            sy(y),
            LEFT - 6.0,
            sy(y) + 4.0,
            label(y)
        );
    }
    for &x in xt {
        let _ = writeln!(
            svg,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="{bottom}" y2="{1}" stroke="#999"/><text x="{0:.1}" y="{2}" text-anchor="middle">{3}</text>"##,
            sx(x),
            bottom + 5.0,
            bottom + 18.0,
            label(x)
        );
    }
    let _ = writeln!(
        svg,
        r##"<polyline fill="none" stroke="#333" points="{LEFT},{TOP} {LEFT},{bottom} {right},{bottom}"/>"##
    );
    let _ = writeln!(svg, r#"<text x="{}" y="{}" text-anchor="middle">step</text>"#, (LEFT + right) / 2.0, H - 10.0);
    let _ = writeln!(
        svg,
        r#"<text x="16" y="{0}" text-anchor="middle" transform="rotate(-90 16 {0})">loss</text>"#,
        (TOP + bottom) / 2.0
    );
}

fn legend(svg: &mut String, with_eval: bool) {
    let x = W - RIGHT - 200.0;
    let _ = writeln!(
        svg,
        r##"<line x1="{x}" x2="{}" y1="18" y2="18" stroke="#08519c" stroke-width="2"/><text x="{}" y="22">train (running mean)</text>"##,
        x + 20.0,
        x + 26.0
    );
    if with_eval {
        let _ = writeln!(
            svg,
            r##"<circle cx="{}" cy="32" r="4" fill="#d94801"/><text x="{}" y="36">eval</text>"##,
            x + 10.0,
            x + 26.0
        );
    }
}

/// The smallest and largest value, widened when they coincide.
fn span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if hi - lo < 1e-9 {
        (lo - 0.5, hi + 0.5)
    } else {
        (lo, hi)
    }
}

/// About five round ticks covering `[lo, hi]`.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let raw = (hi - lo) / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let first = (lo / step).floor() * step;
    let mut out = vec![];
    let mut t = first;
    while t < hi + step * 0.999 && out.len() < 20 {
        out.push(t);
        t += step;
    }
    out
}

fn label(v: f64) -> String {
    if v.abs() >= 1000.0 || v.fract().abs() < 1e-9 {
        format!("{}", v.round())
    } else if v.abs() >= 1.0 {
        format!("{v:.2}").trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.3}").trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Mean over a trailing window of about 5% of the points (at least 1).
fn running_mean(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let window = (points.len() / 20).max(1);
    let mut sum = 0.0;
    points
        .iter()
        .enumerate()
        .map(|(i, &(x, y))| {
            sum += y;
            if i >= window {
                sum -= points[i - window].1;
            }
            (x, sum / (i + 1).min(window) as f64)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 10.0), [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = ticks(2.31, 4.87);
        assert!(t[0] <= 2.31 && *t.last().unwrap() >= 4.87, "{t:?}");
        let step = t[1] - t[0];
        let mantissa = step / 10f64.powf(step.log10().floor());
        assert!([1.0, 2.0, 5.0].iter().any(|m| (m - mantissa).abs() < 1e-9), "{t:?}");
        assert!(t.windows(2).all(|w| ((w[1] - w[0]) - step).abs() < 1e-9) && (3..=7).contains(&t.len()), "{t:?}");
    }

    #[test]
    fn the_plot_has_a_curve_and_eval_dots() {
        let r = |step, loss: f32, eval: Option<f64>| Record {
            step,
            loss: Some(loss),
            grad_norm: Some(1.0),
            lr: 0.1,
            tokens: 10,
            total_tokens: 10 * step,
            seconds: step as f64,
            eval_loss: eval,
            eval_perplexity: eval.map(f64::exp),
            eval_accuracy: None,
        };
        let svg = loss_svg(&[r(1, 4.0, None), r(2, 3.0, Some(3.5)), r(3, f32::NAN, None), r(4, 2.0, Some(2.5))]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<circle").count(), 2 + 1, "two eval dots and the legend's");
        assert!(!svg.contains("NaN"), "{svg}");
        assert!(loss_svg(&[]).contains("no finite loss"));
    }
}
