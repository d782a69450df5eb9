//! One layer's neighbourhood as an SVG picture for the HTML report, drawn here because
//! Graphviz may be missing: the nodes `--dot --around NAME --depth N` would draw, laid
//! out by [`super::layered`], coloured as the DOT view colours them (ops by the neft
//! pass that added them; frozen weights grey; graph inputs green, trainable ones with a
//! heavy border; weights whose neurons are selected with a dashed green border).
//!
//! In: a graph, the name to centre on, a depth, and which names are trainable or
//! selected. Out: [`LayerView`], the SVG and how many nodes were left out.

use super::dot::{pass_colour, FROZEN_FILL, INPUT_FILL};
use super::layered::{layout, BOX_H};
use crate::ir::{Graph, Node, NodeIndex, PASS_KEY};
use crate::markup::escape;
use petgraph::visit::EdgeRef;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

/// More boxes than this stop being readable at page width; the nearest ones are kept.
pub const MAX_NODES: usize = 32;
/// Longer names are shortened in the box (the full name is in the tooltip).
const MAX_CHARS: usize = 24;
const CHAR_W: f64 = 6.6;
const TRAINABLE_STROKE: &str = "#1b7837";

pub struct ViewRequest<'a> {
    /// A value or node name (as for `--around`).
    pub around: &'a str,
    pub depth: usize,
    /// Graph inputs that training updates (the `.rows` of split weights).
    pub trainable: &'a BTreeSet<String>,
    /// Frozen weights whose neurons are selected (or could be, in a plain model).
    pub selected: &'a BTreeSet<String>,
    /// Prefix of the SVG's element ids, unique within the page.
    pub id: &'a str,
}

pub struct LayerView {
    pub svg: String,
    /// What the boxes drawn mean (for [`legend_html`]).
    pub keys: BTreeSet<Key>,
    /// Nodes within the depth that were not drawn (farthest first) to stay readable.
    pub cut: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Look<'a> {
    Op(Option<&'a str>),
    Input,
    Trainable,
    Frozen,
    Selected,
}

struct ViewBox<'a> {
    look: Look<'a>,
    title: String,
    detail: String,
    tooltip: String,
}

pub fn layer_view(graph: &Graph, req: &ViewRequest) -> anyhow::Result<LayerView> {
    let near = super::around::neighbourhood(graph, req.around, req.depth)?;
    let cut = near.len().saturating_sub(MAX_NODES);
    let keep: BTreeSet<NodeIndex> = near.into_iter().take(MAX_NODES).collect();
    // Number the kept nodes in topological order, as the layout wants.
    let order: Vec<NodeIndex> = graph.topo_order()?.into_iter().filter(|i| keep.contains(i)).collect();
    let number: BTreeMap<NodeIndex, usize> = order.iter().enumerate().map(|(k, &i)| (i, k)).collect();
    let boxes: Vec<ViewBox> = order.iter().map(|&i| view_box(graph, i, req)).collect();
    let mut edges: BTreeMap<(usize, usize), Vec<String>> = BTreeMap::new();
    for &i in &order {
        for e in graph.g.edges_directed(i, petgraph::Direction::Outgoing) {
            if let Some(&to) = number.get(&e.target()) {
                edges.entry((number[&i], to)).or_default().push(e.weight().name.clone());
            }
        }
    }
    let keys = boxes.iter().map(|b| key(b.look)).collect();
    Ok(LayerView { svg: draw(&boxes, &edges, req.id), keys, cut })
}

fn view_box<'a>(graph: &'a Graph, i: NodeIndex, req: &ViewRequest) -> ViewBox<'a> {
    match graph.node(i) {
        Node::Op { proto, .. } => {
            let pass = proto.metadata_props.iter().find(|m| m.key() == PASS_KEY).map(|m| m.value());
            ViewBox {
                look: Look::Op(pass),
                title: proto.op_type().to_string(),
                detail: short(proto.name()),
                tooltip: format!("{} '{}' ({})", proto.op_type(), proto.name(), pass.unwrap_or("model")),
            }
        }
        Node::Input(v) => {
            let trainable = req.trainable.contains(v.name());
            ViewBox {
                look: if trainable { Look::Trainable } else { Look::Input },
                title: short(v.name()),
                detail: if trainable { "trainable input" } else { "input" }.into(),
                tooltip: format!("graph input '{}'", v.name()),
            }
        }
        Node::Initializer(t) => {
            let selected = req.selected.contains(t.name());
            ViewBox {
                look: if selected { Look::Selected } else { Look::Frozen },
                title: short(t.name()),
                detail: format!("{:?}", t.dims),
                tooltip: format!(
                    "initializer '{}' {:?}{}",
                    t.name(),
                    t.dims,
                    if selected { ", neurons selected" } else { "" }
                ),
            }
        }
        Node::SparseInitializer(s) => {
            let name = s.values.as_ref().map(|v| v.name()).unwrap_or("");
            ViewBox {
                look: Look::Frozen,
                title: short(name),
                detail: "sparse".into(),
                tooltip: format!("sparse initializer '{name}'"),
            }
        }
    }
}

/// At most [`MAX_CHARS`] characters: the start and the end, which tell names apart.
fn short(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    if chars.len() <= MAX_CHARS {
        return name.to_string();
    }
    let head = (MAX_CHARS - 1) / 2;
    let tail = MAX_CHARS - 1 - head;
    let s: String = chars[..head].iter().chain(['…'].iter()).chain(&chars[chars.len() - tail..]).collect();
    s
}

fn box_width(b: &ViewBox) -> f64 {
    (b.title.chars().count().max(b.detail.chars().count()) as f64 * CHAR_W + 16.0).max(64.0)
}

fn draw(boxes: &[ViewBox], edges: &BTreeMap<(usize, usize), Vec<String>>, id: &str) -> String {
    let widths: Vec<f64> = boxes.iter().map(box_width).collect();
    let pairs: Vec<(usize, usize)> = edges.keys().copied().collect();
    let l = layout(&widths, &pairs);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{0:.0}" height="{1:.0}" viewBox="0 0 {0:.0} {1:.0}" font-family="sans-serif" font-size="11">"##,
        l.width, l.height
    );
    let _ = writeln!(
        svg,
        r##"<defs><marker id="{id}-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#666"/></marker></defs>"##
    );
    for (route, names) in l.routes.iter().zip(edges.values()) {
        let _ = writeln!(
            svg,
            r##"<path d="{}" fill="none" stroke="#666" marker-end="url(#{id}-arrow)"><title>{}</title></path>"##,
            curve(route),
            escape(&names.join(", "))
        );
    }
    for (k, b) in boxes.iter().enumerate() {
        svg.push_str(&box_svg(b, l.pos[k], widths[k]));
    }
    svg.push_str("</svg>\n");
    svg
}

/// A route as an SVG path: straight down through the layers it crosses, and between
/// layers an S-curve that leaves and arrives vertically (so arrowheads point down).
fn curve(route: &[(f64, f64)]) -> String {
    let mut d = format!("M{:.1},{:.1}", route[0].0, route[0].1);
    for pair in route.windows(2) {
        let ((x0, y0), (x1, y1)) = (pair[0], pair[1]);
        let mid = (y0 + y1) / 2.0;
        let _ = if x0 == x1 {
            write!(d, " L{x1:.1},{y1:.1}")
        } else {
            write!(d, " C{x0:.1},{mid:.1} {x1:.1},{mid:.1} {x1:.1},{y1:.1}")
        };
    }
    d
}

fn box_svg(b: &ViewBox, (x, y): (f64, f64), w: f64) -> String {
    let (fill, stroke, stroke_width, dash, rx) = match b.look {
        Look::Op(pass) => (pass_colour(pass), "#555", 1.0, "", 6.0),
        Look::Input => (INPUT_FILL, "#555", 1.0, "", 14.0),
        Look::Trainable => (INPUT_FILL, TRAINABLE_STROKE, 3.0, "", 14.0),
        Look::Frozen => (FROZEN_FILL, "#888", 1.0, "", 0.0),
        Look::Selected => (FROZEN_FILL, TRAINABLE_STROKE, 2.0, r#" stroke-dasharray="5 3""#, 0.0),
    };
    let cx = x + w / 2.0;
    format!(
        "<g><title>{}</title><rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{BOX_H}\" rx=\"{rx}\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"{stroke_width}\"{dash}/>\
         <text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-weight=\"bold\">{}</text>\
         <text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#444\" font-size=\"10\">{}</text></g>\n",
        escape(&b.tooltip),
        y + 14.0,
        escape(&b.title),
        y + 27.0,
        escape(&b.detail)
    )
}

/// What a box's colour and border mean, for the legend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    ModelOp,
    SplitRows,
    Loss,
    Backward,
    Optimizer,
    OtherPass,
    Frozen,
    Selected,
    Input,
    Trainable,
}

fn key(look: Look) -> Key {
    match look {
        Look::Op(None) => Key::ModelOp,
        Look::Op(Some("split_rows" | "mask_params" | "lora")) => Key::SplitRows,
        Look::Op(Some("loss")) => Key::Loss,
        Look::Op(Some("autodiff")) => Key::Backward,
        Look::Op(Some("optimizer")) => Key::Optimizer,
        Look::Op(Some(_)) => Key::OtherPass,
        Look::Frozen => Key::Frozen,
        Look::Selected => Key::Selected,
        Look::Input => Key::Input,
        Look::Trainable => Key::Trainable,
    }
}

/// The legend of the keys that occur, as HTML; `selected` names what a dashed weight is.
pub fn legend_html(keys: &BTreeSet<Key>, selected: &str) -> String {
    let swatch =
        |style: String, label: &str| format!("<span class=\"key\"><i style=\"{style}\"></i>{}</span>", escape(label));
    let pass = |p: &str| format!("background:{}", pass_colour(Some(p)));
    let entries: Vec<String> = keys
        .iter()
        .map(|k| match k {
            Key::ModelOp => swatch(format!("background:{}", pass_colour(None)), "model op"),
            Key::SplitRows => swatch(pass("split_rows"), "split rows / masks / LoRA"),
            Key::Loss => swatch(pass("loss"), "loss"),
            Key::Backward => swatch(pass("autodiff"), "backward (autodiff)"),
            Key::Optimizer => swatch(pass("optimizer"), "optimizer"),
            Key::OtherPass => swatch(pass("other"), "other neft pass"),
            Key::Frozen => swatch(format!("background:{FROZEN_FILL};border-radius:0"), "frozen weight"),
            Key::Selected => swatch(
                format!("background:{FROZEN_FILL};border:2px dashed {TRAINABLE_STROKE};border-radius:0"),
                selected,
            ),
            Key::Input => swatch(format!("background:{INPUT_FILL}"), "graph input"),
            Key::Trainable => {
                swatch(format!("background:{INPUT_FILL};border:3px solid {TRAINABLE_STROKE}"), "trainable input")
            }
        })
        .collect();
    format!("<div class=\"legend\">{}</div>\n", entries.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_keep_their_start_and_end() {
        assert_eq!(short("val_244"), "val_244");
        let s = short("val_244.selected_index.Expand");
        assert_eq!(s.chars().count(), MAX_CHARS);
        assert!(s.starts_with("val_244.sel") && s.ends_with("ex.Expand") && s.contains('…'), "{s}");
    }
}
