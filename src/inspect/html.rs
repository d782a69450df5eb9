//! `neft inspect OUT/ --html FILE` and `neft inspect MODEL.onnx --html FILE`: the report
//! as one page a browser opens offline. Everything is inline (CSS in `<style>`, SVG in
//! the page, no scripts, no fonts or images to fetch), so the file can be mailed or
//! attached to a CI run and still look the same.
//!
//! In: an artifact folder, or a loaded model. Out: the page's text; [`write_html`]
//! writes it atomically. The tables and numbers are the text report's (see
//! [`super::table`]); the pictures are the heat map, the loss curve and
//! [`super::layer_view`].

use super::artifact::{nodes_text, pass_table, plan_facts, size_facts, tensor_table, training_text};
use super::layer_view::{layer_view, legend_html, LayerView, ViewRequest, MAX_NODES};
use super::table::{facts_html, Table};
use super::{layer_table, model_facts, ops_by_count, parameters_text, trainable_text, value_table};
use crate::artifact::Plan;
use crate::ir::Graph;
use crate::markup::escape;
use crate::onnx::Model;
use crate::types::Trainable;
use std::collections::BTreeSet;
use std::fmt::Write;
use std::path::Path;

/// Which layer the layer view draws, and how far around it.
pub struct Focus<'a> {
    /// A weight name or role; `None`: the layer with the most selected neurons (an
    /// artifact folder) or the first trainable layer (a model).
    pub around: Option<&'a str>,
    pub depth: usize,
}

const STYLE: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;color:#1a1a1a;margin:24px auto;max-width:1240px;padding:0 16px}
h1{font-size:22px;margin:0 0 12px}
h2{font-size:17px;margin:30px 0 8px;padding-bottom:4px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:6px 0;font-size:13px}
th,td{padding:3px 10px;text-align:left;border-bottom:1px solid #eee;vertical-align:top}
th{background:#f6f6f6}
.num{text-align:right;font-variant-numeric:tabular-nums}
table.facts th{background:none;color:#555;white-space:nowrap}
.figs{display:flex;flex-wrap:wrap;gap:28px;align-items:flex-start}
figure{margin:0;max-width:100%;overflow-x:auto}
figcaption{font-weight:600;font-size:14px;margin:4px 0 6px}
.key{display:inline-flex;align-items:center;margin:0 14px 6px 0;font-size:12px}
.key i{display:inline-block;width:20px;height:12px;border:1px solid #555;border-radius:4px;margin-right:6px}
.note{color:#555;font-size:13px;max-width:900px}
code{background:#f3f3f3;padding:1px 4px;border-radius:3px}
";

/// A page under construction: sections of already-escaped HTML.
struct Page {
    title: String,
    body: String,
}

impl Page {
    fn new(title: String) -> Page {
        let body = format!("<h1>{}</h1>\n", escape(&title));
        Page { title, body }
    }

    fn section(&mut self, heading: &str, html: &str) {
        let _ = write!(self.body, "<h2>{}</h2>\n{html}", escape(heading));
    }

    fn finish(self) -> String {
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n{}<p class=\"note\">Written by neft {}.</p>\n</body>\n</html>\n",
            escape(&self.title),
            self.body,
            env!("CARGO_PKG_VERSION")
        )
    }
}

fn note(text: &str) -> String {
    format!("<p class=\"note\">{}</p>\n", escape(text))
}

fn figure(caption: &str, content: &str) -> String {
    let caption =
        if caption.is_empty() { String::new() } else { format!("<figcaption>{}</figcaption>\n", escape(caption)) };
    format!("<figure>{caption}{content}</figure>\n")
}

/// The report of an artifact folder: plan, sizes, heat map, loss curve, one layer
/// before and after the rewrite, and what each pass added.
pub fn artifact_html(dir: &Path, focus: &Focus) -> anyhow::Result<String> {
    let s = super::summarize_artifacts(dir)?;
    let plan = Plan::load_dir(&dir)?;
    let mut page = Page::new(format!("neft inspect: {}", s.dir));
    let mut facts = plan_facts(&s);
    facts.extend(size_facts(&s));
    facts.push(("nodes", nodes_text(&s.nodes)));
    page.section("Plan", &facts_html(&facts));
    page.section("Trainable tensors", &tensor_table(&s).html());
    page.section("Where the selected neurons are", &figure("", &crate::cli::plan_heatmap_svg(&plan)));
    page.section("Training", &training_html(dir, s.training.as_ref())?);
    let p = pick_trained(&plan, focus.around)?;
    page.section(
        &format!("One rewritten layer: {} ({}), {} of {} neurons", p.role, p.source, p.rows.len(), p.source_rows),
        &before_after_html(dir, &plan, p, focus.depth)?,
    );
    page.section("What each pass added to the train step", &pass_table(&s).html());
    Ok(page.finish())
}

fn training_html(dir: &Path, summary: Option<&super::artifact::TrainingSummary>) -> anyhow::Result<String> {
    let path = dir.join(crate::train::metrics::METRICS_FILE);
    let Some(t) = summary.filter(|_| path.is_file()) else {
        let command = format!("neft train {} --data TRAIN.jsonl", dir.display());
        return Ok(format!(
            "<p class=\"note\">Not trained yet: <code>{}</code> writes metrics.jsonl, and this section then shows the loss curve.</p>\n",
            escape(&command)
        ));
    };
    let records = crate::train::metrics::read(&path)?;
    Ok(format!("{}{}", note(&training_text(t)), figure("", &crate::train::plot::loss_svg(&records))))
}

/// The trained weight called `around` (source name, tensor name or role), or the one
/// with the most selected neurons.
fn pick_trained<'a>(plan: &'a Plan, around: Option<&str>) -> anyhow::Result<&'a Trainable> {
    let weights = || plan.params.iter().filter(|p| !p.role.ends_with("(bias)"));
    let found = match around {
        Some(n) => weights().find(|p| p.source == n || p.name == n || p.role == n),
        // Reversed so that of equals the first wins (max_by_key keeps the last).
        None => weights().rev().max_by_key(|p| p.rows.len()),
    };
    found.ok_or_else(|| {
        let known: Vec<String> = weights().map(|p| format!("{} ({})", p.source, p.role)).collect();
        anyhow::anyhow!(
            "--around {}: not a weight these artifacts train; they train {}",
            around.unwrap_or(""),
            known.join(", ")
        )
    })
}

/// The weight's neighbourhood in the source model and in the train step, side by side.
fn before_after_html(dir: &Path, plan: &Plan, p: &Trainable, depth: usize) -> anyhow::Result<String> {
    let trainable: BTreeSet<String> = plan.params.iter().map(|q| q.name.clone()).collect();
    let selected: BTreeSet<String> = plan.params.iter().map(|q| q.source.clone()).collect();
    let train_path = dir.join("train_step.onnx");
    let after_graph = Graph::from_proto(crate::onnx::load(&train_path)?.graph())?;
    let after = ViewRequest { around: &p.name, depth, trainable: &trainable, selected: &selected, id: "after" };
    let after = layer_view(&after_graph, &after)?;
    let mut figs = String::new();
    let mut notes = vec![];
    let mut before_keys = BTreeSet::new();
    match before_view(plan, p, depth, &selected) {
        Ok(before) => {
            figs += &figure(&format!("before: {} in the source model", p.source), &before.svg);
            notes.push(cut_note("before", before.cut));
            before_keys = before.keys;
        }
        Err(e) => notes.push(format!("No picture of the source model: {e:#}.")),
    }
    figs += &figure(&format!("after: {} in train_step.onnx", p.name), &after.svg);
    notes.push(cut_note("after", after.cut));
    let keys = after.keys.union(&before_keys).copied().collect();
    Ok(format!(
        "{}<div class=\"figs\">\n{figs}</div>\n{}",
        legend_html(&keys, "weight with selected neurons"),
        view_note(&notes, &train_path, &p.name, depth)
    ))
}

/// What the pictures leave out, and the command that draws the rest with Graphviz.
fn view_note(notes: &[String], model: &Path, around: &str, depth: usize) -> String {
    let text: Vec<&str> = notes.iter().map(String::as_str).filter(|s| !s.is_empty()).collect();
    let command = format!("neft inspect {} --dot g.svg --around {around} --depth {depth}", model.display());
    format!(
        "<p class=\"note\">Nodes within {depth} edges of the weight. {} With Graphviz installed, <code>{}</code> draws the same nodes of the whole graph.</p>\n",
        escape(&text.join(" ")),
        escape(&command)
    )
}

/// The weight in the model the plan was compiled from, if that file is still there and
/// unchanged (a different model would draw a misleading "before").
fn before_view(plan: &Plan, p: &Trainable, depth: usize, selected: &BTreeSet<String>) -> anyhow::Result<LayerView> {
    let path = Path::new(&plan.source.path);
    if crate::artifact::SourceInfo::of_file(path)?.sha256 != plan.source.sha256 {
        anyhow::bail!("{} has changed since it was compiled", path.display());
    }
    let graph = Graph::from_proto(crate::onnx::load(path)?.graph())?;
    let none = BTreeSet::new();
    layer_view(&graph, &ViewRequest { around: &p.source, depth, trainable: &none, selected, id: "before" })
}

fn cut_note(which: &str, cut: usize) -> String {
    if cut == 0 {
        String::new()
    } else {
        format!("{which}: the {MAX_NODES} nearest nodes drawn, {cut} farther ones left out.")
    }
}

/// The report of a plain model, to look at before compiling it: format, interface,
/// trainable layers, op mix, and the neighbourhood of one trainable layer.
pub fn model_html(model: &Model, graph: &Graph, focus: &Focus) -> anyhow::Result<String> {
    let s = super::summarize(model, graph);
    let mut page = Page::new(format!("neft inspect: {}", s.path));
    let mut facts = model_facts(&s);
    facts.push(("nodes", format!("{} ({} op types)", s.nodes, s.op_histogram.len())));
    facts.push(("parameters", parameters_text(&s.parameters)));
    facts.push(("trainable", trainable_text(&s.trainable)));
    page.section("Model", &facts_html(&facts));
    let io = format!(
        "<div class=\"figs\">\n{}{}</div>\n",
        figure("inputs", &value_table(&s.inputs).html()),
        figure("outputs", &value_table(&s.outputs).html())
    );
    page.section("Inputs and outputs", &io);
    page.section("Trainable layers", &layer_table(&s.layers).html());
    page.section("Op histogram", &op_tables(&s));
    let layer = match focus.around {
        Some(n) => Some(s.layers.iter().find(|l| l.weight == n || l.role == n).ok_or_else(|| {
            let known: Vec<String> = s.layers.iter().map(|l| format!("{} ({})", l.weight, l.role)).collect();
            anyhow::anyhow!("--around {n}: not a trainable layer of {}; its layers: {}", s.path, known.join(", "))
        })?),
        None => s.layers.first(),
    };
    match layer {
        Some(l) => {
            let candidates: BTreeSet<String> = s.layers.iter().map(|l| l.weight.clone()).collect();
            let none = BTreeSet::new();
            let req = ViewRequest {
                around: &l.weight,
                depth: focus.depth,
                trainable: &none,
                selected: &candidates,
                id: "layer",
            };
            let view = layer_view(graph, &req)?;
            let html = format!(
                "{}{}{}",
                legend_html(&view.keys, "weight of a trainable layer"),
                figure(&l.weight, &view.svg),
                view_note(&[cut_note(&l.weight, view.cut)], &model.path, &l.weight, focus.depth)
            );
            page.section(&format!("A trainable layer: {} ({}), {} neurons", l.role, l.weight, l.neurons), &html);
        }
        None => {
            page.section("Trainable layers", &note("No MatMul, Gemm or Conv with a constant weight: nothing to train."))
        }
    }
    Ok(page.finish())
}

/// Op types by count, in side-by-side tables short enough to read without scrolling.
fn op_tables(s: &super::ModelSummary) -> String {
    const ROWS: usize = 12;
    let ops = ops_by_count(s);
    let tables: String = ops
        .chunks(ROWS)
        .map(|chunk| {
            let mut t = Table::new(&["op", ">nodes"]);
            for (op, n) in chunk {
                t.row(vec![op.to_string(), n.to_string()]);
            }
            t.html()
        })
        .collect();
    format!("<div class=\"figs\">\n{tables}</div>\n")
}

/// Writes the page atomically (a reader never sees half a page).
pub fn write_html(path: &Path, html: &str) -> anyhow::Result<()> {
    crate::fsutil::write_bytes_atomic(path, html.as_bytes()).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}
