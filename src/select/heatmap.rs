//! Where the selected neurons live: the selected share of every layer, as a text
//! summary per module (role) and as a heat map (SVG, blocks × modules).
//!
//! In: the layers, the groups and the rows selected in each. Out: [`LayerShare`]s,
//! [`summary_text`] and [`heatmap_svg`] (self-contained, no scripts or fonts to fetch).

use super::units::{split_role, Group};
use crate::analyze::Layer;
use crate::markup::escape;
use serde::Serialize;
use std::fmt::Write;

/// The selection in one layer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerShare {
    pub weight: String,
    pub block: Option<usize>,
    /// The role without the block (`mlp.up`, `head`).
    pub module: String,
    /// Whether the targets included the layer.
    pub targeted: bool,
    pub rows_selected: usize,
    pub rows: usize,
    pub params_selected: u64,
    pub params: u64,
}

impl LayerShare {
    pub fn share(&self) -> f64 {
        self.params_selected as f64 / self.params.max(1) as f64
    }
}

/// One entry per layer of the model, in layer order.
pub fn layer_shares(layers: &[Layer], groups: &[Group], picked: &[Vec<usize>]) -> Vec<LayerShare> {
    let mut out: Vec<LayerShare> = layers
        .iter()
        .map(|l| {
            let (block, module) = split_role(&l.role);
            LayerShare {
                weight: l.weight.clone(),
                block,
                module: module.to_string(),
                targeted: false,
                rows_selected: 0,
                rows: l.neurons,
                params_selected: 0,
                params: l.params,
            }
        })
        .collect();
    for (g, rows) in groups.iter().zip(picked) {
        for m in &g.members {
            let s = &mut out[m.layer];
            s.targeted = true;
            s.rows = g.units;
            s.rows_selected = rows.len();
            s.params = m.row_params * g.units as u64;
            s.params_selected = m.row_params * rows.len() as u64;
        }
    }
    out
}

/// Modules in the order a reader expects them.
fn modules(shares: &[LayerShare]) -> Vec<String> {
    const ORDER: [&str; 8] = ["attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down", "head"];
    let mut found: Vec<String> = vec![];
    for s in shares {
        if !found.contains(&s.module) {
            found.push(s.module.clone());
        }
    }
    let rank = |m: &String| ORDER.iter().position(|o| o == m).unwrap_or(ORDER.len());
    found.sort_by_key(|m| rank(m));
    found
}

/// Per module: rows and parameters selected of those targeted.
pub fn summary_text(shares: &[LayerShare]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "  {:<12} {:>6} {:>22} {:>26}",
        "module", "layers", "rows selected/total", "params selected/total"
    );
    for m in modules(shares) {
        let of: Vec<&LayerShare> = shares.iter().filter(|s| s.module == m && s.targeted).collect();
        if of.is_empty() {
            continue;
        }
        let sum = |f: fn(&LayerShare) -> u64| of.iter().map(|s| f(s)).sum::<u64>();
        let (rs, r) = (sum(|s| s.rows_selected as u64), sum(|s| s.rows as u64));
        let (ps, p) = (sum(|s| s.params_selected), sum(|s| s.params));
        let pct = 100.0 * ps as f64 / p.max(1) as f64;
        let _ = writeln!(
            out,
            "  {m:<12} {:>6} {:>22} {:>26}",
            of.len(),
            format!("{rs}/{r}"),
            format!("{ps}/{p} ({pct:.1}%)")
        );
    }
    out
}

const CELL_W: usize = 76;
const CELL_H: usize = 26;
const LEFT: usize = 84;
const TOP: usize = 58;

/// Blocks down, modules across; each cell the selected share of that layer's
/// parameters, shaded relative to the largest share. Layers outside any block form the
/// last row; layers not targeted are grey.
pub fn heatmap_svg(shares: &[LayerShare], title: &str) -> String {
    let cols = modules(shares);
    let mut rows: Vec<Option<usize>> = shares.iter().map(|s| s.block).collect();
    rows.sort_by_key(|b| b.map_or(usize::MAX, |b| b));
    rows.dedup();
    let max = shares.iter().filter(|s| s.targeted).map(LayerShare::share).fold(0.0, f64::max);
    // Wide enough for the cells, the title and the legend line (~7 px a character).
    let legend_end = LEFT + 11 * 14 + 4 + 7 * 62;
    let w = (LEFT + CELL_W * cols.len() + 20).max(16 + 8 * title.chars().count()).max(legend_end);
    let h = TOP + CELL_H * rows.len() + 56;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(svg, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(svg, r#"<text x="8" y="18" font-size="13" font-weight="bold">{}</text>"#, escape(title));
    for (c, m) in cols.iter().enumerate() {
        let x = LEFT + c * CELL_W + CELL_W / 2;
        let _ = writeln!(svg, r#"<text x="{x}" y="{}" text-anchor="middle">{}</text>"#, TOP - 8, escape(m));
    }
    for (r, block) in rows.iter().enumerate() {
        let y = TOP + r * CELL_H;
        let name = block.map_or("other".to_string(), |b| format!("block {b}"));
        let _ = writeln!(svg, r#"<text x="{}" y="{}" text-anchor="end">{name}</text>"#, LEFT - 8, y + CELL_H / 2 + 4);
        for (c, m) in cols.iter().enumerate() {
            let x = LEFT + c * CELL_W;
            let cell: Vec<&LayerShare> = shares.iter().filter(|s| s.block == *block && &s.module == m).collect();
            svg.push_str(&cell_svg(&cell, x, y, max));
        }
    }
    legend(&mut svg, TOP + CELL_H * rows.len() + 16, max);
    svg.push_str("</svg>\n");
    svg
}

/// One cell: the layers of one block and module (usually one).
fn cell_svg(cell: &[&LayerShare], x: usize, y: usize, max: f64) -> String {
    let (ws, hs) = (CELL_W - 2, CELL_H - 2);
    if cell.is_empty() {
        return String::new();
    }
    let targeted: Vec<&&LayerShare> = cell.iter().filter(|s| s.targeted).collect();
    if targeted.is_empty() {
        return format!(
            "<rect x=\"{x}\" y=\"{y}\" width=\"{ws}\" height=\"{hs}\" fill=\"#eeeeee\"/>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#999999\">–</text>\n",
            x + ws / 2,
            y + hs / 2 + 4
        );
    }
    let (ps, p): (u64, u64) = targeted.iter().fold((0, 0), |a, s| (a.0 + s.params_selected, a.1 + s.params));
    let share = ps as f64 / p.max(1) as f64;
    let t = if max > 0.0 { share / max } else { 0.0 };
    let names: Vec<&str> = targeted.iter().map(|s| s.weight.as_str()).collect();
    let rows: usize = targeted.iter().map(|s| s.rows_selected).sum();
    let all: usize = targeted.iter().map(|s| s.rows).sum();
    format!(
        "<rect x=\"{x}\" y=\"{y}\" width=\"{ws}\" height=\"{hs}\" fill=\"{}\"><title>{}: {rows}/{all} rows, {ps}/{p} params</title></rect>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"{}\">{:.1}%</text>\n",
        shade(t),
        escape(&names.join(", ")),
        x + ws / 2,
        y + hs / 2 + 4,
        if t > 0.55 { "white" } else { "black" },
        100.0 * share
    )
}

fn legend(svg: &mut String, y: usize, max: f64) {
    for k in 0..=10 {
        let x = LEFT + k * 14;
        let _ = writeln!(svg, r#"<rect x="{x}" y="{y}" width="14" height="12" fill="{}"/>"#, shade(k as f64 / 10.0));
    }
    let _ = writeln!(svg, r#"<text x="{}" y="{}" text-anchor="end">0%</text>"#, LEFT - 4, y + 10);
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\">{:.1}% of the layer's parameters selected (grey: not targeted)</text>",
        LEFT + 11 * 14 + 4,
        y + 10,
        100.0 * max
    );
}

/// White to dark blue.
fn shade(t: f64) -> String {
    let t = t.clamp(0.0, 1.0);
    let lerp = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    format!("#{:02x}{:02x}{:02x}", lerp(247.0, 8.0), lerp(251.0, 48.0), lerp(255.0, 107.0))
}
